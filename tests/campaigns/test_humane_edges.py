"""Humane edges: error pages that keep the reason, [TEST] subjects, audit read by people."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import User
from campaigns import services
from campaigns.templatetags.countersign_format import for_people
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_refusal_is_a_styled_page_that_keeps_the_reason(
    olivia: User, make_member: Callable[..., User]
) -> None:
    make_member()
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    response = client_for(olivia).post(
        reverse("admin:campaigns_campaign_approve", args=[campaign.pk]),
        {"digest": campaign.frozen_digest},
    )
    assert response.status_code == 403
    html = response.content.decode()
    assert "403 · Not allowed" in html
    assert "campaigns.approve_campaign" in html


def test_a_get_on_an_action_explains_itself(olivia: User) -> None:
    campaign = make_campaign(olivia)
    response = client_for(olivia).get(reverse("admin:campaigns_campaign_pause", args=[campaign.pk]))
    assert response.status_code == 405
    assert "only takes a button press" in response.content.decode()
    assert response["Allow"] == "POST"


def test_a_missing_campaign_is_a_styled_404(olivia: User) -> None:
    response = client_for(olivia).get(reverse("admin:campaigns_campaign_review", args=[999999]))
    assert response.status_code == 404
    assert "404 · Not found" in response.content.decode()


def test_no_view_site_link_leads_nowhere(olivia: User) -> None:
    html = client_for(olivia).get(reverse("admin:index")).content.decode()
    assert "View site" not in html


def test_test_sends_say_test_in_the_subject(olivia: User) -> None:
    campaign = make_campaign(olivia)
    services.send_test(campaign, by=olivia)
    assert mail.outbox and all(m.subject.startswith("[TEST] ") for m in mail.outbox)


def test_audit_values_read_as_text_not_python() -> None:
    assert for_people(["olivia@example.com"]) == "olivia@example.com"
    assert for_people(None) == "—"
    assert for_people(True) == "yes"
    assert for_people({"a": 1, "b": [2, 3]}) == "a: 1; b: 2, 3"


def test_campaign_timeline_shows_people_values_to_the_second(olivia: User) -> None:
    campaign = make_campaign(olivia)
    services.send_test(campaign, by=olivia)
    html = (
        client_for(olivia)
        .get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
        .content.decode()
    )
    timeline = html[html.index('id="audit-timeline"') :]
    assert "['olivia@example.com']" not in timeline
    assert "olivia@example.com" in timeline
    assert "None" not in timeline


def test_author_sees_the_rejection_on_top_of_the_campaign_page(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    make_member()
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.reject_campaign(
        campaign, by=rita, digest=campaign.frozen_digest, comment="Subject must name the date"
    )
    html = (
        client_for(olivia)
        .get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
        .content.decode()
    )
    banner = html[html.index('id="rejection-banner"') :]
    assert banner.index("Subject must name the date") < banner.index('id="campaign-status"')
    assert "Sent back by rita" in banner


def test_compose_lists_every_placeholder_with_imported_attributes_and_the_footer(
    olivia: User,
) -> None:
    from accounts.models import AudienceAttribute

    AudienceAttribute.objects.create(name="plan")
    html = client_for(olivia).get(reverse("admin:campaigns_campaign_add")).content.decode()
    assert 'data-insert="{{ plan }}"' in html
    assert 'data-insert="{{ unsubscribe_url }}"' in html
    assert "the builder adds a footer" in html
    assert "placeholders.js" in html
