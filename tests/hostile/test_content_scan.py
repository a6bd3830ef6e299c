"""Weakness 2: scans of staff-written content ran in quadratic time.

A 30,000-letter body made the review page time out (30 s); the same search ran on test
sends and in the worker. Every scan is linear now, and templates have a size limit that
is refused at save.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.core.mail import EmailMultiAlternatives

from accounts.models import User
from campaigns.forms import CampaignForm
from campaigns.guard.addresses import address_tokens
from campaigns.guard.layers import preflight
from campaigns.guard.message import require_no_foreign_addresses
from campaigns.models import Campaign
from campaigns.templating import MAX_TEMPLATE_LENGTH, html_changes, unclosed_markup
from tests.factories import make_sender

pytestmark = pytest.mark.django_db

MEGABYTE = 1_000_000
# Inputs that made a left-to-right address search or Python's HTMLParser quadratic.
ADVERSARIAL: dict[str, str] = {
    "letters": "a" * MEGABYTE,
    "dotted letters": "a." * (MEGABYTE // 2),
    "at signs": "@" * MEGABYTE,
    "letters and at signs": "a@" * (MEGABYTE // 2),
    "unclosed tags": "<a " * (MEGABYTE // 3),
    "a long domain": "x@" + "a" * MEGABYTE,
}


def cpu_seconds(work: Callable[[], object]) -> float:
    # CPU time of this process only: other load on a shared machine does not count.
    started = time.process_time()
    work()
    return time.process_time() - started


def message_with_body(body: str) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        "Update", body, "news@example.com", ["ann@example.org"], headers={"Message-ID": "<1@x>"}
    )
    message.attach_alternative(f"<p>{body}</p>", "text/html")
    return message


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_the_content_layer_scans_a_megabyte_body_in_well_under_a_second(name: str) -> None:
    message = message_with_body(ADVERSARIAL[name])
    assert cpu_seconds(lambda: require_no_foreign_addresses(message)) < 1.0


def test_the_address_search_still_finds_addresses_in_a_megabyte(
    make_member: Callable[..., User],
) -> None:
    make_member("zoe@example.net")
    body = "a" * (MEGABYTE // 2) + " write to zoe@example.net " + "b" * (MEGABYTE // 2)
    assert "zoe@example.net" in address_tokens([body])
    violations = preflight(message_with_body(body))
    assert [v.layer for v in violations if v.layer == "content"] == ["content"]


def test_unclosed_markup_is_found_in_linear_time_and_html_changes_is_never_quadratic() -> None:
    hostile = "<a " * (MAX_TEMPLATE_LENGTH // 3)
    assert cpu_seconds(lambda: unclosed_markup(hostile)) < 1.0
    assert unclosed_markup(hostile) == 0
    well_formed = "<p>hello <b>world</b></p>\n" * (MAX_TEMPLATE_LENGTH // 27)
    assert unclosed_markup(well_formed) is None
    assert cpu_seconds(lambda: html_changes(well_formed)) < 1.0


def compose(**fields: str) -> CampaignForm:
    data = {
        "name": "Hostile",
        "category": Campaign.Category.SERVICE_NOTICE,
        "sender": str(make_sender().pk),
        "subject_template": "Notice",
        "text_template": "Hello.",
        "html_template": "",
        **fields,
    }
    return CampaignForm(data=data)


def test_an_over_long_template_is_refused_at_save_with_the_limit(olivia: User) -> None:
    form = compose(text_template="a" * (MAX_TEMPLATE_LENGTH + 1))
    assert not form.is_valid()
    assert "the limit is 100,000" in form.errors["text_template"][0]
    assert not Campaign.objects.exists()


def test_an_unclosed_tag_is_refused_at_save_with_its_position(olivia: User) -> None:
    form = compose(html_template="<p>Hello</p>\n<p class='x' <b>there</b></p>")
    assert not form.is_valid()
    assert str(form.errors["html_template"][0]).startswith(
        "line 2, column 1: this tag is not closed"
    )
