"""Retention: delete deliveries and provider events once a campaign is older than the policy.

Approvals and audit events are never deleted (their managers refuse bulk deletes, their
models refuse `delete()`, and on PostgreSQL a trigger refuses the SQL). The purge keeps what
a retained approval needs: a campaign whose approval is still inside the retention period is
refused, and the deliveries an approval's stored samples name are kept for good, as are
`unknown` deliveries still waiting for an operator's decision. Each campaign's purge is one
transaction with its audit event, so the chain says what went, when, by whose hand and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.chain import record_audit

from .models import Approval, Campaign, Delivery, ProviderEvent

PURGED = "retention.purged"
_CHUNK = 5000


class PurgeRefused(Exception):
    """A purge that would remove what the retention policy or an approval still needs."""


@dataclass
class CampaignPurge:
    campaign_id: int
    deliveries: int = 0
    provider_events: int = 0
    kept: int = 0


@dataclass
class PurgeReport:
    cutoff: datetime
    purged: list[CampaignPurge] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    unmatched_provider_events: int = 0


def retention_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=int(settings.RETENTION_DAYS))


def refusal(campaign: Campaign, cutoff: datetime) -> str | None:
    """Why `campaign`'s deliveries may not be purged yet, or None if they may."""
    if campaign.status not in (Campaign.Status.SENT, Campaign.Status.CANCELLED):
        return f"it is {campaign.get_status_display().lower()}, not finished"
    ended = campaign.completed_at or campaign.cancelled_at
    if ended is None or ended >= cutoff:
        return (
            f"it ended {ended:%Y-%m-%d}, inside the retention period"
            if ended
            else ("its end is not recorded")
        )
    recent = (
        Approval.objects.filter(campaign=campaign, created_at__gte=cutoff).order_by("pk").first()
    )
    if recent is not None:
        return (
            f"approval {recent.pk} of {recent.created_at:%Y-%m-%d} is inside the retention period"
        )
    return None


def _kept_delivery_ids(campaign: Campaign) -> set[int]:
    """Deliveries the record still needs: every approval's samples, and undecided unknowns."""
    kept: set[int] = set()
    for samples in Approval.objects.filter(campaign=campaign).values_list("samples", flat=True):
        kept.update(int(s["delivery_id"]) for s in samples or [] if s.get("delivery_id"))
    kept.update(
        Delivery.objects.filter(campaign=campaign, status=Delivery.Status.UNKNOWN).values_list(
            "pk", flat=True
        )
    )
    return kept


def purge_campaign(
    campaign: Campaign, *, by: Any, cutoff: datetime, dry_run: bool = False
) -> CampaignPurge:
    """Delete one finished campaign's expired deliveries and their provider events."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        why = refusal(campaign, cutoff)
        if why is not None:
            raise PurgeRefused(f"“{campaign.name}” (#{campaign.pk}) is not purged: {why}.")
        kept = _kept_delivery_ids(campaign)
        doomed = Delivery.objects.filter(campaign=campaign).exclude(pk__in=kept)
        result = CampaignPurge(campaign.pk, kept=len(kept))
        if dry_run:
            result.deliveries = doomed.count()
            result.provider_events = ProviderEvent.objects.filter(delivery__in=doomed).count()
            return result
        # In chunks, so no statement carries a million ids; one transaction all the same.
        while ids := list(doomed.values_list("pk", flat=True)[:_CHUNK]):
            result.provider_events += ProviderEvent.objects.filter(delivery_id__in=ids).delete()[0]
            result.deliveries += Delivery.objects.filter(pk__in=ids).delete()[0]
        record_audit(
            PURGED,
            actor=by,
            obj=campaign,
            data={
                "campaign_id": campaign.pk,
                "deliveries": result.deliveries,
                "provider_events": result.provider_events,
                "kept_for_approvals_and_decisions": sorted(kept),
                "cutoff": cutoff.isoformat(),
                "retention_days": int(settings.RETENTION_DAYS),
            },
        )
    return result


def purge_expired(*, by: Any, now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """Purge every finished campaign past the retention period, and unmatched old events."""
    report = PurgeReport(cutoff=retention_cutoff(now))
    ended = Coalesce("completed_at", "cancelled_at")
    candidates = (
        Campaign.objects.annotate(ended=ended)
        .filter(ended__lt=report.cutoff, deliveries__isnull=False)
        .distinct()
        .order_by("pk")
    )
    for campaign in candidates:
        try:
            result = purge_campaign(campaign, by=by, cutoff=report.cutoff, dry_run=dry_run)
        except PurgeRefused as refused:
            report.refused[campaign.pk] = str(refused)
            continue
        if result.deliveries or result.provider_events:
            report.purged.append(result)
    # Events that never matched a delivery (or whose delivery went) are old data too.
    unmatched = ProviderEvent.objects.filter(
        Q(delivery__isnull=True), received_at__lt=report.cutoff
    )
    if dry_run:
        report.unmatched_provider_events = unmatched.count()
    else:
        with transaction.atomic():
            report.unmatched_provider_events = unmatched.delete()[0]
            if report.unmatched_provider_events:
                record_audit(
                    PURGED,
                    actor=by,
                    data={
                        "unmatched_provider_events": report.unmatched_provider_events,
                        "cutoff": report.cutoff.isoformat(),
                        "retention_days": int(settings.RETENTION_DAYS),
                    },
                )
    return report
