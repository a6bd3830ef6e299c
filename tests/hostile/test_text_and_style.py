"""Weakness 9 (templates and previews): bidi overrides in subjects and bodies, CSS
expressions surviving the sanitizer, and previews that fetched remote images.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from campaigns import services
from campaigns.forms import CampaignForm
from campaigns.models import Campaign, Delivery
from campaigns.rendering import build_message, recipient_for_delivery, render_eml
from campaigns.templating import UnsafeHeaderValue, sanitize_html
from tests.conftest import DEMO_PASSWORD
from tests.factories import make_campaign, make_sender

pytestmark = pytest.mark.django_db


def compose(**fields: str) -> CampaignForm:
    data = {
        "name": "Hostile",
        "category": Campaign.Category.SERVICE_NOTICE,
        "sender": str(make_sender().pk),
        "subject_template": "Notice",
        "text_template": "Hello.",
        **fields,
    }
    return CampaignForm(data=data)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        (
            "subject_template",
            "Invoice \u202efdp.exe",
            "line 1, column 9: the subject contains the invisible character U+202E",
        ),
        (
            "text_template",
            "Pay to\n\u2066IBAN\u2069 now",
            "line 2, column 1: the template contains the invisible character U+2066",
        ),
        (
            "html_template",
            "<p>Reset at zoe\u200b@example.net</p>",
            "line 1, column 16: the template contains the invisible character U+200B",
        ),
    ],
)
def test_bidi_and_invisible_characters_are_refused_at_save_with_their_position(
    field: str, value: str, error: str, olivia: User
) -> None:
    form = compose(**{field: value})
    assert not form.is_valid()
    assert str(form.errors[field][0]).startswith(error)
    assert not Campaign.objects.exists()


def test_a_members_name_with_a_bidi_override_never_reaches_a_header(
    olivia: User, make_member: Callable[..., User]
) -> None:
    make_member("ann@example.org", first_name="Ann \u202eevil")
    campaign = make_campaign(olivia, subject_template="Quarterly news")
    campaign = services.submit_for_review(campaign, by=olivia)
    recipient = recipient_for_delivery(Delivery.objects.get(campaign=campaign))
    message = build_message(campaign, recipient, send_time=timezone.now())
    parsed = email.message_from_bytes(render_eml(message), policy=email.policy.default)
    assert str(parsed["To"]) == "ann@example.org"  # the name is dropped, not shown reversed
    # A subject that greets them by that name cannot be built: the delivery fails.
    campaign.subject_template = "News for {{ first_name }}"
    with pytest.raises(UnsafeHeaderValue, match="U\\+202E"):
        build_message(campaign, recipient, send_time=timezone.now())


@pytest.mark.parametrize(
    "style",
    [
        "width:expression(alert(1))",
        "width: exp\\72 ession(alert(1))",
        "width: exp/**/ression(alert(1))",
        "background-color: url(https://tracker.example/pixel)",
        "color: red; -moz-binding: url(x)",
    ],
)
def test_the_sanitizer_drops_css_that_runs_or_fetches(style: str) -> None:
    cleaned = sanitize_html(f'<p style="{style}">x</p>')
    assert "expression" not in cleaned.lower().replace(" ", "")
    assert "url(" not in cleaned and "binding" not in cleaned


def test_the_sanitizer_keeps_ordinary_inline_styles() -> None:
    cleaned = sanitize_html('<p style="color: rgb(0, 0, 0); width: 50%">x</p>')
    assert cleaned == '<p style="color:rgb(0, 0, 0);width:50%">x</p>'


def test_the_preview_loads_remote_images_only_when_the_reviewer_asks(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    make_member("ann@example.org", first_name="Ann")
    html = '<p>Hi</p><img src="https://tracker.example/open.png" alt="">'
    campaign = make_campaign(olivia, html_template=html + "{{ unsubscribe_url }} Countersign")
    campaign = services.submit_for_review(campaign, by=olivia)
    delivery = Delivery.objects.get(campaign=campaign)
    client = Client()
    assert client.login(username="rita", password=DEMO_PASSWORD)
    url = reverse("admin:campaigns_campaign_preview_html", args=[campaign.pk, delivery.pk])
    quiet = client.get(url)["Content-Security-Policy"]
    assert "img-src data:;" in quiet and "https:" not in quiet
    asked = client.get(url + "?remote_images=1")["Content-Security-Policy"]
    assert "img-src https: data:;" in asked
    review = client.get(reverse("admin:campaigns_campaign_review", args=[campaign.pk]))
    assert b"Load remote images" in review.content
