"""The compose preview: the form's unsaved content, built by the sender's own builder."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services
from campaigns.digests import content_digest
from campaigns.models import Campaign, Delivery, Suppression
from campaigns.rendering import (
    build_message,
    preview_time,
    recipient_for_member,
    recipient_for_test,
    render_eml,
)
from campaigns.suppressions import add_suppression
from tests.factories import HTML, TEXT, make_campaign, make_sender

pytestmark = pytest.mark.django_db

JSON = {"Accept": "application/json"}


@pytest.fixture
def members(make_member: Callable[..., User]) -> list[User]:
    return [
        make_member("ada@example.org", first_name="Ada", last_name="Lovelace", locale="en"),
        make_member("bruno@example.org", first_name="Bruno", locale="de"),
        make_member("chloe@example.org", first_name="Chloé", locale="fr"),
    ]


def client_for(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def preview_url(campaign: Campaign | None = None) -> str:
    name = "admin:campaigns_campaign_compose_preview"
    return reverse(name, args=[campaign.pk]) if campaign is not None else reverse(name)


def form_data(campaign: Campaign, **changes: str) -> dict[str, str]:
    """What the compose page posts for `campaign` (admin widgets: dates in two fields)."""
    data = {
        "name": campaign.name,
        "category": campaign.category,
        "sender": str(campaign.sender_id),
        "subject_template": campaign.subject_template,
        "text_template": campaign.text_template,
        "html_template": campaign.html_template,
        "audience_locale": campaign.audience_locale,
        "audience_attribute_name": campaign.audience_attribute_name,
        "audience_attribute_value": campaign.audience_attribute_value,
        "audience_addresses": campaign.audience_addresses,
    }
    for name in ("audience_joined_after", "audience_joined_before", "scheduled_at"):
        value = getattr(campaign, name)
        local = timezone.localtime(value) if value else None
        data[f"{name}_0"] = f"{local:%Y-%m-%d}" if local else ""
        data[f"{name}_1"] = f"{local:%H:%M:%S}" if local else ""
    data.update(changes)
    return data


def saved_as_the_admin_saves(author: User, **fields: Any) -> Campaign:
    """A draft whose content round-trips through the form: form fields strip surrounding
    whitespace, so the factory's trailing newlines would make the posted content differ."""
    return make_campaign(author, text_template=TEXT.strip(), html_template=HTML.strip(), **fields)


def shown_eml(answer: dict[str, Any]) -> str:
    found = re.search(r'<pre class="cs-eml">(.*?)</pre>', answer["html"], re.S)
    assert found, answer["html"]
    return html.unescape(found[1])


def test_preview_is_the_message_the_builder_gives_the_saved_campaign(
    olivia: User, members: list[User]
) -> None:
    # Seconds: what the admin's two date fields carry.
    campaign = saved_as_the_admin_saves(
        olivia, scheduled_at=(timezone.now() + timedelta(days=2)).replace(microsecond=0)
    )
    ada = members[0]
    answer = (
        client_for(olivia)
        .post(preview_url(campaign), form_data(campaign, preview_recipient=ada.email), headers=JSON)
        .json()
    )
    assert answer["ok"], answer
    saved = Campaign.objects.get(pk=campaign.pk)
    sent = build_message(saved, recipient_for_member(ada), send_time=preview_time(saved))
    # Byte for byte: every header (the schedule is in the digest behind the Message-ID and
    # dates the unsubscribe link), both parts.
    assert shown_eml(answer) == render_eml(sent).decode()
    assert '<strong class="cs-one-recipient">1 recipient</strong>' in answer["html"]
    assert html.escape(f"News for you, {ada.first_name}") in answer["html"]


def test_preview_shows_unsaved_edits_and_saves_nothing(olivia: User, members: list[User]) -> None:
    campaign = make_campaign(olivia)
    before = model_to_dict(Campaign.objects.get(pk=campaign.pk))
    digest = content_digest(campaign)
    events = AuditEvent.objects.count()
    edited = form_data(
        campaign,
        subject_template="Changed, {{ first_name }}!",
        preview_recipient="bruno@example.org",
    )
    answer = client_for(olivia).post(preview_url(campaign), edited, headers=JSON).json()
    assert answer["ok"], answer
    assert "Changed, Bruno!" in answer["html"]
    after = Campaign.objects.get(pk=campaign.pk)
    assert model_to_dict(after) == before
    assert after.status == Campaign.Status.DRAFT and after.frozen_digest == ""
    assert content_digest(after) == digest
    assert AuditEvent.objects.count() == events
    assert Delivery.objects.count() == 0


def test_a_new_campaign_previews_before_its_first_save_and_is_not_created(
    olivia: User, members: list[User]
) -> None:
    sender = make_sender()
    draft = Campaign(
        name="",
        sender=sender,
        subject_template="Hello {{ first_name }}",
        text_template="Hi {{ first_name }}",
    )
    answer = client_for(olivia).post(preview_url(), form_data(draft), headers=JSON).json()
    assert answer["ok"], answer
    assert "Hello Ada" in answer["html"]  # the first recipient of the audience
    assert "Not saved yet" in answer["html"]
    assert Campaign.objects.count() == 0
    assert AuditEvent.objects.filter(action__startswith="campaign.").count() == 0


def test_without_scripts_the_button_gets_a_page_with_the_html_sandboxed(
    olivia: User, members: list[User]
) -> None:
    campaign = make_campaign(olivia)
    response = client_for(olivia).post(preview_url(campaign), form_data(campaign))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing was saved" in page
    frame = re.search(r"<iframe[^>]*>", page)
    assert frame, page
    assert 'sandbox=""' in frame[0] and "srcdoc=" in frame[0]
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', frame[0])[1])  # type: ignore[index]
    assert srcdoc.index("Content-Security-Policy") < srcdoc.index("<body>")
    assert "default-src 'none'" in srcdoc


def test_a_bad_template_comes_back_at_its_field_with_line_and_column(olivia: User) -> None:
    campaign = make_campaign(olivia)
    bad = "Hello,\n\nYour account: {{ user.password }}\n"
    answer = (
        client_for(olivia)
        .post(preview_url(campaign), form_data(campaign, text_template=bad), headers=JSON)
        .json()
    )
    assert not answer["ok"]
    (message,) = answer["errors"]["text_template"]
    assert re.match(r"line 3, column \d+: ", message), message
    assert "cs-preview-errors" in answer["html"]
    assert "cs-eml" not in answer["html"]


@pytest.mark.parametrize("persona", ["mallory", "rita"])
def test_only_those_who_may_compose_preview(
    persona: str, olivia: User, request: pytest.FixtureRequest
) -> None:
    campaign = make_campaign(olivia)
    user: User = request.getfixturevalue(persona)
    for url in (preview_url(campaign), preview_url()):
        response = client_for(user).post(url, form_data(campaign), headers=JSON)
        assert response.status_code == 403, (url, response.status_code)


def test_a_campaign_nobody_may_edit_any_more_has_no_compose_preview(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    response = client_for(olivia).post(preview_url(campaign), form_data(campaign), headers=JSON)
    assert response.status_code == 403


def test_get_is_refused(olivia: User) -> None:
    campaign = make_campaign(olivia)
    assert client_for(olivia).get(preview_url(campaign)).status_code == 405


def test_csrf_is_enforced(olivia: User, members: list[User]) -> None:
    campaign = make_campaign(olivia)
    client = client_for(olivia, enforce_csrf_checks=True)
    assert client.post(preview_url(campaign), form_data(campaign), headers=JSON).status_code == 403
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token
    data = form_data(campaign, csrfmiddlewaretoken=token[1])
    assert client.post(preview_url(campaign), data, headers=JSON).status_code == 200


def test_the_compose_page_offers_the_preview_as_part_of_its_form(olivia: User) -> None:
    campaign = make_campaign(olivia)
    page = client_for(olivia).get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    text = page.content.decode()
    button = re.search(r'<button[^>]*id="cs-preview-button"[^>]*>', text)
    assert button, "no Preview button"
    assert 'form="campaign_form"' in button[0]
    assert f'formaction="{preview_url(campaign)}"' in button[0]
    # After the Save buttons, so Enter in a field still saves.
    assert text.index('name="_continue"') < text.index('id="cs-preview-button"')
    assert "campaigns/preview.js" in text


# --- Whom the preview is for ----------------------------------------------------------------


def previewed_address(answer: dict[str, Any]) -> str:
    found = re.search(r'class="cs-sample cs-preview" data-address="([^"]+)"', answer["html"])
    assert found, answer
    return found[1]


def test_by_default_the_first_recipient_of_the_audience_the_form_defines(
    olivia: User, members: list[User]
) -> None:
    campaign = make_campaign(olivia)
    client = client_for(olivia)
    answer = client.post(preview_url(campaign), form_data(campaign), headers=JSON).json()
    assert previewed_address(answer) == "ada@example.org"
    # The unsaved locale filter decides, not the saved audience.
    german = form_data(campaign, audience_locale="de")
    answer = client.post(preview_url(campaign), german, headers=JSON).json()
    assert previewed_address(answer) == "bruno@example.org"


def test_an_empty_audience_previews_the_composer_with_her_own_data(
    olivia: User, members: list[User]
) -> None:
    campaign = saved_as_the_admin_saves(olivia)
    nobody = form_data(campaign, audience_locale="pt")
    answer = client_for(olivia).post(preview_url(campaign), nobody, headers=JSON).json()
    assert answer["ok"], answer
    assert previewed_address(answer) == olivia.email
    assert "the audience is empty" in answer["html"]
    own = build_message(
        campaign,
        recipient_for_test(campaign, olivia, olivia.email),
        send_time=preview_time(campaign),
    )
    assert shown_eml(answer) == render_eml(own).decode()


def test_a_seed_address_of_the_composer_is_allowed(olivia: User, members: list[User]) -> None:
    olivia.seed_addresses = "olivia.inbox@example.com"
    olivia.save(update_fields=["seed_addresses"])
    campaign = make_campaign(olivia)
    data = form_data(campaign, preview_recipient="Olivia.Inbox@example.com")
    answer = client_for(olivia).post(preview_url(campaign), data, headers=JSON).json()
    assert answer["ok"], answer
    assert "News for you, Olivia" in answer["html"]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("rita@example.com", "neither in this campaign's audience"),  # staff, not audience
        ("bruno@example.org", "neither in this campaign's audience"),  # filtered out (de)
        ("stranger@example.org", "neither in this campaign's audience"),
        ("ada@example.org, bruno@example.org", ""),
    ],
)
def test_anyone_outside_the_audience_is_refused_at_the_recipient_field(
    address: str, why: str, olivia: User, rita: User, members: list[User]
) -> None:
    campaign = make_campaign(olivia, audience_locale="en")
    data = form_data(campaign, preview_recipient=address)
    answer = client_for(olivia).post(preview_url(campaign), data, headers=JSON).json()
    assert not answer["ok"]
    (message,) = answer["errors"]["preview_recipient"]
    assert why in message
    assert "cs-eml" not in answer["html"]


def test_a_suppressed_member_is_refused(olivia: User, members: list[User]) -> None:
    add_suppression("ada@example.org", Suppression.Reason.UNSUBSCRIBED, source="test")
    campaign = make_campaign(olivia)
    data = form_data(campaign, preview_recipient="ada@example.org")
    answer = client_for(olivia).post(preview_url(campaign), data, headers=JSON).json()
    assert "suppressed" in answer["errors"]["preview_recipient"][0]
    # And the default skips them, as submission would.
    answer = (
        client_for(olivia).post(preview_url(campaign), form_data(campaign), headers=JSON).json()
    )
    assert previewed_address(answer) == "bruno@example.org"
