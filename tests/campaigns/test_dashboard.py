"""The home page per role, the sending panel and its counters, the list's progress column."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import User
from campaigns import services, worker
from campaigns.models import Campaign, Delivery, DeliveryCount, SendingSwitch
from campaigns.progress import PIPELINE, campaign_progress, fold_counts, status_counts
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast(settings: Any) -> None:
    settings.SEND_RATE_PER_SECOND = 10_000.0
    settings.SEND_BURST = 10_000
    settings.REDIS_URL = ""


@pytest.fixture
def members(make_member: Callable[..., User]) -> list[User]:
    return [make_member(f"m{i}@example.org", first_name=f"M{i}") for i in range(7)]


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def submitted(author: User, **fields: Any) -> Campaign:
    return services.submit_for_review(make_campaign(author, **fields), by=author)


def approved(author: User, reviewer: User, **fields: Any) -> Campaign:
    campaign = submitted(author, **fields)
    services.approve_campaign(campaign, by=reviewer, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    return campaign


# --- The counters --------------------------------------------------------------------------------


def test_counters_match_the_ledger_through_a_send(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    assert status_counts(campaign.pk) == {"pending": 7}
    worker.send_batch(campaign.pk, limit=3)
    assert status_counts(campaign.pk) == worker.delivery_summary(campaign.pk)
    worker.send_batch(campaign.pk, limit=100)
    assert status_counts(campaign.pk) == worker.delivery_summary(campaign.pk) == {"sent": 7}


def test_counters_follow_raw_updates_and_deletes(
    olivia: User, rita: User, members: list[User]
) -> None:
    # Triggers, not application code: a bulk UPDATE that bypasses every model method counts.
    campaign = submitted(olivia)
    Delivery.objects.filter(campaign=campaign, user=members[0]).update(status="failed")
    Delivery.objects.filter(campaign=campaign).exclude(status="failed").update(attempts=2)
    assert status_counts(campaign.pk) == {"pending": 6, "failed": 1}
    Delivery.objects.filter(campaign=campaign, status="failed").delete()
    assert status_counts(campaign.pk) == {"pending": 6}


def test_folding_keeps_the_totals(olivia: User, rita: User, members: list[User]) -> None:
    campaign = approved(olivia, rita)
    for _ in range(3):
        worker.send_batch(campaign.pk, limit=2)
    before = status_counts(campaign.pk)
    rows_before = DeliveryCount.objects.filter(campaign=campaign).count()
    if connection.vendor == "postgresql":
        fold_counts(campaign.pk)
        assert DeliveryCount.objects.filter(campaign=campaign).count() < rows_before
    assert status_counts(campaign.pk) == before


def test_progress_reports_in_pipeline_order_with_claimed_as_waiting(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    Delivery.objects.filter(campaign=campaign, user__in=members[:2]).update(status="claimed")
    progress = campaign_progress(campaign)
    assert [s.key for s in progress.stages] == [key for key, _, _ in PIPELINE]
    assert progress.counts["waiting"] == 7
    assert "claimed" not in progress.counts
    assert progress.total == 7 and progress.sent == 0


# --- The progress endpoint and the panel ---------------------------------------------------------


def test_progress_endpoint_answers_json_for_a_viewer(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    worker.send_batch(campaign.pk, limit=100)
    campaign.refresh_from_db()
    response = client_for(olivia).get(
        reverse("admin:campaigns_campaign_progress", args=[campaign.pk])
    )
    assert response.status_code == 200
    data = response.json()
    assert data["sent"] == data["total"] == 7
    assert data["percent"] == 100
    assert data["started_at"]
    assert [s["key"] for s in data["stages"]][:3] == ["waiting", "sending", "sent"]


def test_progress_endpoint_refuses_staff_without_a_role(
    olivia: User, mallory: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    response = client_for(mallory).get(
        reverse("admin:campaigns_campaign_progress", args=[campaign.pk])
    )
    assert response.status_code == 403


def test_campaign_page_draws_a_progress_element_with_sent_and_total(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    worker.send_batch(campaign.pk, limit=3)
    page = client_for(rita).get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    html = page.content.decode()
    assert '<progress id="send-progress" value="3" max="7"' in html
    assert "campaigns/progress.js" in html
    order = [html.index(f'data-stage="{key}"') for key, _, _ in PIPELINE]
    assert order == sorted(order)
    assert "Claimed" not in html


# --- The home page -------------------------------------------------------------------------------


def test_reviewer_home_shows_the_review_queue_with_a_count(
    olivia: User, rita: User, members: list[User]
) -> None:
    submitted(olivia, name="First")
    submitted(olivia, name="Second")
    html = client_for(rita).get(reverse("admin:index")).content.decode()
    assert 'id="review-queue-count">2<' in html
    assert "First" in html and "Second" in html


def test_ops_home_shows_drafts_rejections_with_comment_and_no_queue(
    olivia: User, rita: User, members: list[User]
) -> None:
    make_campaign(olivia, name="Unfinished draft")
    sent_back = submitted(olivia, name="Sent back")
    services.reject_campaign(
        sent_back, by=rita, digest=sent_back.frozen_digest, comment="Fix the subject line"
    )
    html = client_for(olivia).get(reverse("admin:index")).content.decode()
    assert "Unfinished draft" in html
    assert "Fix the subject line" in html
    assert "review-queue" not in html


def test_home_shows_sending_progress_and_the_halt_banner(
    olivia: User, rita: User, root: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita, name="Going out")
    worker.send_batch(campaign.pk, limit=2)
    services.set_emergency_stop(by=root, halted=True, reason="provider incident")
    html = client_for(olivia).get(reverse("admin:index")).content.decode()
    assert "Going out" in html
    assert '<progress class="cs-mini" value="2" max="7"' in html
    assert "Emergency stop is on" in html and "provider incident" in html
    # Only those who may pull the switch get its form.
    assert 'id="halt-switch"' not in html
    assert SendingSwitch.is_halted()


def test_admin_home_has_the_halt_switch(root: User) -> None:
    html = client_for(root).get(reverse("admin:index")).content.decode()
    assert 'id="halt-switch"' in html
    assert reverse("campaigns_emergency_stop") in html


# --- The campaign list ---------------------------------------------------------------------------


def test_list_shows_progress_and_a_drafts_live_count(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita, name="Live one")
    worker.send_batch(campaign.pk, limit=4)
    make_campaign(olivia, name="Still a draft")
    html = client_for(olivia).get(reverse("admin:campaigns_campaign_changelist")).content.decode()
    assert '<progress class="cs-mini" value="4" max="7"' in html
    assert "7 <span" in html  # the draft's live count, not the frozen 0
    assert 'class="cs-badge cs-draft"' in html


# --- The per-recipient table ---------------------------------------------------------------------


def test_recipient_table_filters_by_stage_searches_and_pages_by_id(
    olivia: User, rita: User, members: list[User], settings: Any
) -> None:
    from campaigns import views

    campaign = approved(olivia, rita)
    worker.send_batch(campaign.pk, limit=3)
    client = client_for(rita)
    url = reverse("admin:campaigns_campaign_deliveries", args=[campaign.pk])
    sent = client.get(url + "?stage=sent").content.decode()
    assert sent.count('data-status="sent"') == 3 and 'data-status="pending"' not in sent
    found = client.get(url + "?q=m4@example.org").content.decode()
    assert found.count("<tr data-status") == 1 and "m4@example.org" in found

    views.DELIVERIES_PER_PAGE, saved = 4, views.DELIVERIES_PER_PAGE
    try:
        first = client.get(url).content.decode()
        assert first.count("<tr data-status") == 4 and 'id="next-page"' in first
        last_id = Delivery.objects.filter(campaign=campaign).order_by("id")[3].pk
        second = client.get(url + f"?after={last_id}").content.decode()
        assert second.count("<tr data-status") == 3 and 'id="next-page"' not in second
    finally:
        views.DELIVERIES_PER_PAGE = saved


def test_a_deliverys_message_opens_in_the_browser(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    worker.send_batch(campaign.pk, limit=100)
    delivery = Delivery.objects.filter(campaign=campaign).first()
    assert delivery is not None
    html = (
        client_for(rita)
        .get(reverse("admin:campaigns_campaign_delivery_message", args=[campaign.pk, delivery.pk]))
        .content.decode()
    )
    assert '<strong class="cs-one-recipient">1 recipient</strong>' in html
    assert delivery.address in html
    assert 'class="cs-html" sandbox=""' in html
