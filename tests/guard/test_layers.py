"""Each layer alone blocks its case, and without it the same message really goes out.

With only that layer enabled it blocks a bad message; with no layer enabled the same
message leaves through the same real transport. So each test fails if its layer stops
working.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from campaigns.guard import envelope
from campaigns.guard import layers as guard_layers
from campaigns.guard import provider as provider_layers
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    ANN,
    BAD_MESSAGES,
    BCC_SEND_DEFAULTS,
    BOB,
    Transport,
    clean_message_with_bcc_send_default,
    delivery_message,
    guard_events,
    send,
)
from tests.postmark_stub import POSTMARK_TRANSPORT, PostmarkStub, Reply

pytestmark = pytest.mark.django_db


# --- each layer alone blocks its case; without it the case goes out -----------------------

# (layer, bad message, transports on which that message really leaves without a guard)
LAYER_CASES = [
    ("recipients", "two_to", ["outbox", "smtp", "postmark"]),
    ("recipients", "cc", ["outbox", "smtp", "postmark"]),
    # The outbox writes the headers only, and Django never serializes Bcc: nothing to see.
    ("recipients", "bcc", ["smtp", "postmark"]),
    # Django's SMTP backend refuses to sanitize "a, b" as one address; the others send it.
    ("recipients", "comma_to", ["outbox", "postmark"]),
    ("recipients", "smuggled_cc", ["outbox", "smtp", "postmark"]),
    # Django's message() refuses line breaks itself; anymail's HTTP backends never call it.
    ("headers", "crlf_subject", ["postmark"]),
    ("headers", "crlf_header", ["postmark"]),
    ("merge", "merge_data", ["outbox", "smtp", "postmark"]),
    ("content", "foreign_address", ["outbox", "smtp", "postmark"]),
    ("smtp-envelope", "two_to", ["outbox", "smtp"]),
    ("smtp-envelope", "cc", ["outbox", "smtp"]),
    ("smtp-envelope", "bcc", ["smtp"]),
    ("smtp-envelope", "smuggled_cc", ["outbox", "smtp"]),
    ("anymail-payload", "two_to", ["postmark"]),
    ("anymail-payload", "cc", ["postmark"]),
    ("anymail-payload", "bcc", ["postmark"]),
    ("anymail-payload", "comma_to", ["postmark"]),
    ("anymail-payload", "merge_data", ["postmark"]),
    ("anymail-payload", "crlf_subject", ["postmark"]),
    ("anymail-payload", "crlf_header", ["postmark"]),
    ("anymail-payload", "smuggled_cc", ["postmark"]),
    ("anymail-payload", "bcc_send_default", ["postmark"]),
    ("settings", "bcc_send_default", ["postmark"]),
]


@pytest.mark.parametrize(
    ("layer", "case", "transport_name"),
    [
        pytest.param(layer, case, name, id=f"{layer}-{case}-{name}")
        for layer, case, names in LAYER_CASES
        for name in names
    ],
)
def test_layer_alone_blocks_what_would_otherwise_leave(
    layer: str,
    case: str,
    transport_name: str,
    only_layers: Callable[..., None],
    transport_factory: Callable[..., Transport],
    bob: User,
) -> None:
    anymail = BCC_SEND_DEFAULTS if case == "bcc_send_default" else {}
    transport = transport_factory(transport_name, **anymail)

    only_layers(layer)
    with pytest.raises(GuardViolation) as blocked:
        send(BAD_MESSAGES[case]())
    assert blocked.value.layer == layer
    assert transport.delivered() == []
    assert [event["layer"] for event in guard_events()] == [layer]

    only_layers()  # the same message, with no layer at all
    assert send(BAD_MESSAGES[case]()) == 1
    delivered = transport.delivered()
    assert len(delivered) >= 1
    if case == "merge_data":
        # Nothing of Bob's yet: what went out is a batch-capable message (for Postmark,
        # a post to the batch endpoint, which fans out to every To).
        if transport.stub is not None:
            assert [r.path for r in transport.stub.requests] == ["/email/batch"]
    else:
        leaked = [d for d in delivered if BOB in d.raw or BOB in d.recipients]
        assert leaked, f"{case} went out without {BOB} in it: {delivered!r}"


def test_post_send_layer_flags_a_provider_that_reports_two_recipients(
    stub: PostmarkStub, settings: SettingsWrapper, only_layers: Callable[..., None]
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings()
    stub.script(Reply.ok(to=f"{ANN}, {BOB}"))

    only_layers("post-send")
    with pytest.raises(GuardViolation) as flagged:
        send(delivery_message())
    assert flagged.value.layer == "post-send"
    assert flagged.value.sent is True  # it is a detector: the provider already has it
    assert len(stub.requests) == 1
    assert guard_events() == [
        {
            "layer": "post-send",
            "reason": flagged.value.reason,
            "delivery_id": 1,
            "campaign_id": 7,
            "sent": True,
            "transport": POSTMARK_TRANSPORT,
        }
    ]

    only_layers()
    stub.script(Reply.ok(to=f"{ANN}, {BOB}"))
    assert send(delivery_message()) == 1


def test_post_send_layer_accepts_the_provider_reporting_the_one_recipient(
    stub: PostmarkStub, settings: SettingsWrapper
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings()
    message = delivery_message()
    assert send(message) == 1
    assert set(message.anymail_status.recipients) == {ANN}  # type: ignore[attr-defined]
    provider_layers.require_provider_recipients(message)


def test_message_level_layers_cannot_see_a_bcc_from_send_defaults(
    stub: PostmarkStub, settings: SettingsWrapper
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings(**BCC_SEND_DEFAULTS)
    message = clean_message_with_bcc_send_default()
    for layer in guard_layers.PRE_SEND_LAYERS:
        layer(message)  # every message-level layer passes it
    envelope.require_single_smtp_envelope(message)

    preview = provider_layers.provider_payload_preview(message)
    assert preview is not None and json.loads(preview)["Bcc"] == BOB
    with pytest.raises(GuardViolation) as blocked:
        send(message)
    assert blocked.value.layer == "settings"
    assert stub.requests == []
