"""The message layers in detail: recipients, headers, merge attributes, content."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from campaigns.guard import envelope
from campaigns.guard import message as message_layers
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    ANN,
    BOB,
    SENDER,
    delivery_message,
)

pytestmark = pytest.mark.django_db


# --- layer details -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "to",
    [
        f"alice@example.net <{ANN}>",  # getaddresses reads two, the modern parser one
        f"{ANN} <{BOB}>",
        f"{ANN}; {BOB}",
        f"<{ANN}> {BOB}",
        f"{ANN}@evil.example",
        "Smith, John <ann@example.org>",  # an unquoted comma: two recipients to some parsers
        f"{ANN}\n",
        "",
    ],
)
def test_recipients_layer_refuses_a_to_that_any_parser_reads_differently(to: str) -> None:
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_single_recipient(delivery_message(to=[to]))
    assert blocked.value.layer == "recipients"


def test_recipients_layer_accepts_a_quoted_display_name_with_a_comma() -> None:
    message_layers.require_single_recipient(delivery_message(to=[f'"Smith, John" <{ANN}>']))
    message_layers.require_single_recipient(delivery_message(to=[f'"Zoë Ünal" <{ANN.upper()}>']))


def test_an_internationalized_domain_matches_its_punycode_form_on_the_wire() -> None:
    message = delivery_message(to=["Ann <ann@xn--bcher-kva.example>"])
    message.expected_recipient = "ann@bücher.example"
    message_layers.require_single_recipient(message)
    envelope.require_single_smtp_envelope(message)


def test_recipients_layer_refuses_an_address_other_than_the_deliverys() -> None:
    message = delivery_message(to=[BOB])
    with pytest.raises(GuardViolation, match="the delivery is for"):
        message_layers.require_single_recipient(message)


@pytest.mark.parametrize(
    "header",
    [
        "To",
        "to",
        "Bcc",
        "Resent-To",
        "Resent-Cc",
        "Resent-Bcc",
        "Resent-From",
        "X-SMTPAPI",
        "X-Contact",
    ],
)
def test_recipients_layer_refuses_address_headers_smuggled_in_extra_headers(header: str) -> None:
    message = delivery_message(headers={header: BOB})
    with pytest.raises(GuardViolation, match="header"):
        message_layers.require_single_recipient(message)


def test_recipients_layer_allows_sender_and_unsubscribe_headers() -> None:
    message = delivery_message(
        headers={
            "Reply-To": "support@countersign.test",
            "Sender": SENDER,
            "List-Unsubscribe": "<https://example.test/u/abc>, <mailto:unsubscribe@countersign.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    )
    message_layers.require_single_recipient(message)


def test_recipients_layer_refuses_recipients_in_esp_extra() -> None:
    message = delivery_message()
    message.esp_extra = {"Bcc": BOB}  # type: ignore[attr-defined]
    with pytest.raises(GuardViolation, match="esp_extra"):
        message_layers.require_single_recipient(message)


@pytest.mark.parametrize(
    "attr", ["merge_data", "merge_metadata", "merge_headers", "merge_global_data"]
)
@pytest.mark.parametrize("value", [{}, None, {ANN: {"name": "Ann"}}])
def test_merge_layer_refuses_any_merge_attribute_even_empty(attr: str, value: object) -> None:
    message = delivery_message()
    setattr(message, attr, value)
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_no_merge(message)
    assert blocked.value.layer == "merge"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\nb"},
        {"X-Note": "a\rb"},
        {"X-Note": "a\u2028b"},
        {"X-Note": "a\x00b"},
        {"X-Bad\nName": "a"},
        {"X Space": "a"},
    ],
)
def test_headers_layer_refuses_line_breaks_and_bad_header_names(headers: dict[str, str]) -> None:
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_clean_headers(delivery_message(headers=headers))
    assert blocked.value.layer == "headers"


def test_headers_layer_refuses_a_line_break_in_metadata() -> None:
    message = delivery_message()
    message.metadata = {"campaign_id": "7\r\nBcc: bob@example.org"}
    with pytest.raises(GuardViolation, match="line break"):
        message_layers.require_clean_headers(message)


@pytest.mark.parametrize(
    "where",
    [
        "subject",
        "body",
        "html",
        "html_entity",
        "mailto_escaped",
        "display_name",
        "attachment",
    ],
)
def test_content_layer_refuses_another_users_address(where: str, bob: User) -> None:
    message = delivery_message()
    if where == "subject":
        message.subject = f"News from {BOB.upper()}"
    elif where == "body":
        message.body += BOB
    elif where == "html":
        message.alternatives = [(f'<a href="mailto:{BOB}">write</a>', "text/html")]
    elif where == "html_entity":
        message.alternatives = [("<p>bob&#64;example.org</p>", "text/html")]
    elif where == "mailto_escaped":
        message.alternatives = [('<a href="mailto:bob%40example.org">x</a>', "text/html")]
    elif where == "display_name":
        message.to = [f'"{BOB}" <{ANN}>']
    else:
        message.attach("audience.csv", f"email\n{BOB}\n", "text/csv")
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_no_foreign_addresses(message)
    assert blocked.value.layer == "content"
    assert BOB in blocked.value.reason


def test_content_layer_allows_own_sender_unsubscribe_and_non_user_addresses(
    bob: User, settings: SettingsWrapper, django_assert_num_queries: Any
) -> None:
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@countersign.test"
    message = delivery_message()
    message.body += (
        f"You are {ANN.upper()}. Write to {SENDER}, support@countersign.test, "
        "unsubscribe@countersign.test or press@elsewhere.example.\n"
    )
    with django_assert_num_queries(1):
        message_layers.require_no_foreign_addresses(message)
    with django_assert_num_queries(0):
        message_layers.require_no_foreign_addresses(delivery_message())
