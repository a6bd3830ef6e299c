"""Retention: approvals and audit events stay; deliveries and provider events go, audited, late."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services, worker
from campaigns.models import Approval, Campaign, Delivery, ProviderEvent
from campaigns.retention import PURGED, PurgeRefused, purge_campaign, purge_expired
from tests.audit.test_record import export, run_verifier
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

FOUR_YEARS = timedelta(days=4 * 365)


@pytest.fixture(autouse=True)
def _fast(settings: Any) -> None:
    settings.SEND_RATE_PER_SECOND = 10_000.0
    settings.SEND_BURST = 10_000
    settings.REDIS_URL = ""


@pytest.fixture
def sent(olivia: User, rita: User, make_member: Callable[..., User]) -> Campaign:
    for i in range(8):
        make_member(f"r{i}@example.org", first_name=f"R{i}")
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    worker.send_batch(campaign.pk, limit=100)
    for delivery in Delivery.objects.filter(campaign=campaign):
        ProviderEvent.objects.create(
            provider="postmark",
            event_id=f"ev-{delivery.pk}",
            event_type="delivered",
            recipient=delivery.address,
            message_id=delivery.message_id,
            delivery=delivery,
        )
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    return campaign


def sample_ids(campaign: Campaign) -> set[int]:
    approval = Approval.objects.get(campaign=campaign)
    return {int(s["delivery_id"]) for s in approval.samples}


def test_approvals_and_audit_events_refuse_every_delete_the_app_could_make(sent: Campaign) -> None:
    with pytest.raises(ValueError, match="retained"):
        Approval.objects.filter(campaign=sent).delete()
    with pytest.raises(ValueError, match="retained"):
        AuditEvent.objects.all().delete()
    with pytest.raises(ValueError):
        Approval.objects.get(campaign=sent).delete()
    assert Approval.objects.filter(campaign=sent).count() == 1


@pytest.mark.needs_postgres
def test_postgres_refuses_deleting_or_rewriting_an_approval_in_sql(sent: Campaign) -> None:
    approval = Approval.objects.get(campaign=sent)
    for sql in (
        "DELETE FROM campaigns_approval WHERE id = %s",
        "UPDATE campaigns_approval SET digest = 'x' WHERE id = %s",
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [approval.pk])
    # Voiding, once, is the one change allowed.
    Approval.objects.filter(pk=approval.pk).update(voided_at=timezone.now())


def test_purge_keeps_everything_inside_the_retention_period(sent: Campaign) -> None:
    report = purge_expired(by="test")
    assert report.purged == []
    assert Delivery.objects.filter(campaign=sent).count() == 8
    with pytest.raises(PurgeRefused, match="inside the retention period"):
        purge_campaign(sent, by="test", cutoff=timezone.now() - timedelta(days=1))
    with pytest.raises(CommandError, match="inside the retention period"):
        call_command("purge_expired_deliveries", "--campaign", str(sent.pk), stdout=io.StringIO())
    assert not AuditEvent.objects.filter(action=PURGED).exists()


def test_purge_after_the_period_keeps_the_samples_and_undecided_unknowns_and_is_audited(
    sent: Campaign,
) -> None:
    samples = sample_ids(sent)
    unknown = Delivery.objects.filter(campaign=sent).exclude(pk__in=samples).first()
    assert unknown is not None
    Delivery.objects.filter(pk=unknown.pk).update(status=Delivery.Status.UNKNOWN)
    report = purge_expired(by="test", now=timezone.now() + FOUR_YEARS)
    (purged,) = report.purged
    kept = samples | {unknown.pk}
    assert purged.deliveries == 8 - len(kept)
    assert set(Delivery.objects.filter(campaign=sent).values_list("pk", flat=True)) == kept
    assert set(ProviderEvent.objects.values_list("delivery_id", flat=True)) == kept
    assert Approval.objects.filter(campaign=sent).count() == 1
    event = AuditEvent.objects.get(action=PURGED)
    assert event.object_id == str(sent.pk) and event.actor_label == "test"
    assert event.data["deliveries"] == purged.deliveries
    assert sorted(event.data["kept_for_approvals_and_decisions"]) == sorted(kept)


def test_a_campaign_still_sending_is_never_purged(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    make_member("s@example.org")
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    with pytest.raises(PurgeRefused, match="not finished"):
        purge_campaign(campaign, by="test", cutoff=timezone.now() + FOUR_YEARS)


def test_retention_days_moves_the_cutoff_and_unmatched_events_go_too(
    sent: Campaign, settings: Any
) -> None:
    settings.RETENTION_DAYS = 1
    ProviderEvent.objects.create(provider="postmark", event_id="stray", event_type="bounced")
    assert purge_expired(by="test", now=timezone.now() + timedelta(hours=12)).purged == []
    report = purge_expired(by="test", now=timezone.now() + timedelta(days=2))
    assert len(report.purged) == 1 and report.unmatched_provider_events == 1
    assert not ProviderEvent.objects.filter(event_id="stray").exists()


def test_dry_run_counts_and_deletes_nothing(sent: Campaign) -> None:
    report = purge_expired(by="test", now=timezone.now() + FOUR_YEARS, dry_run=True)
    assert report.purged[0].deliveries == 8 - len(sample_ids(sent))
    assert Delivery.objects.filter(campaign=sent).count() == 8
    assert not AuditEvent.objects.filter(action=PURGED).exists()


def test_the_record_of_a_purged_campaign_still_verifies_and_says_what_went(
    sent: Campaign, tmp_path: Path
) -> None:
    purge_expired(by="test", now=timezone.now() + FOUR_YEARS)
    result = run_verifier(export(sent, tmp_path))
    assert result.returncode == 0, result.stdout
    assert "were purged under the retention policy" in result.stdout
