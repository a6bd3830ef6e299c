"""How a send is going: counts in pipeline order, rate, ETA and the sends-per-minute series.

Everything here reads `DeliveryCount` (kept by triggers on the ledger), never the ledger
itself, so a progress request costs a few index rows whether the campaign has a thousand
deliveries or a million.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from .models import Campaign, Delivery, DeliveryCount

S = Delivery.Status

# What a person watching a send wants to know, in the order a message moves through it.
# `claimed` is the worker's internal hold: to a person it is still waiting.
PIPELINE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("waiting", "Waiting", (S.PENDING, S.CLAIMED)),
    ("sending", "Sending", (S.SENDING,)),
    ("sent", "Sent", (S.SENT, S.DELIVERED, S.BOUNCED, S.COMPLAINED)),
    ("retrying", "Retrying", (S.RETRY_WAIT,)),
    ("failed", "Failed", (S.FAILED,)),
    ("skipped", "Skipped", (S.SKIPPED,)),
    ("blocked", "Blocked", (S.BLOCKED,)),
    ("unknown", "Unknown", (S.UNKNOWN,)),
)
STAGE_OF = {status: key for key, _, statuses in PIPELINE for status in statuses}
# Outcomes drawn on the chart, besides "sent".
PROBLEMS = ("failed", "blocked", "unknown")

# A PostgreSQL read folds a campaign's counter rows into one per (status, minute) once this
# many have piled up, so a read never sums more than a few hundred rows.
FOLD_THRESHOLD = 256
# The rate is measured over the last few minutes, not since the start: a pause or a
# throttled provider should show in the ETA at once.
RATE_WINDOW_MINUTES = 3
CHART_MINUTES = 60


@dataclass
class Stage:
    key: str
    label: str
    count: int


@dataclass
class Progress:
    campaign: Campaign
    total: int
    stages: list[Stage]
    # (minute, sent in it, problems in it), oldest first, for the chart.
    per_minute: list[tuple[datetime, int, int]] = field(default_factory=list)
    now: datetime = field(default_factory=timezone.now)

    @property
    def counts(self) -> dict[str, int]:
        return {s.key: s.count for s in self.stages}

    @property
    def sent(self) -> int:
        return self.counts["sent"]

    @property
    def open(self) -> int:
        c = self.counts
        return c["waiting"] + c["sending"] + c["retrying"]

    @property
    def percent(self) -> int:
        return int(100 * self.sent / self.total) if self.total else 0

    @property
    def per_minute_rate(self) -> float:
        """Messages accepted per minute: over the last few minutes while sending (so a
        pause or a throttled provider shows at once), over the whole send once it is over."""
        if not self.per_minute:
            return 0.0
        duration = self.duration
        if self.campaign.completed_at is not None and duration is not None:
            return self.sent * 60.0 / max(duration.total_seconds(), 1.0)
        since = _minute(self.now) - timedelta(minutes=RATE_WINDOW_MINUTES)
        recent = sum(sent for minute, sent, _ in self.per_minute if minute >= since)
        started = self.campaign.sending_started_at or self.per_minute[0][0]
        window_start = max(since, started)
        # A floor of a few seconds: the first message of a send is not a rate of thousands.
        elapsed = max((self.now - window_start).total_seconds(), 5.0)
        return recent * 60.0 / elapsed

    @property
    def eta(self) -> datetime | None:
        rate = self.per_minute_rate
        if self.campaign.status != Campaign.Status.SENDING or not self.open or rate <= 0:
            return None
        return self.now + timedelta(minutes=self.open / rate)

    @property
    def finished_at(self) -> datetime | None:
        return self.campaign.completed_at

    @property
    def duration(self) -> timedelta | None:
        start = self.campaign.sending_started_at
        end = self.campaign.completed_at or (
            self.now if self.campaign.status == Campaign.Status.SENDING else None
        )
        if start is None or end is None:
            return None
        return end - start

    @property
    def duration_text(self) -> str:
        return human_duration(self.duration)

    @property
    def live(self) -> bool:
        """Worth polling: the numbers can still change on their own."""
        return self.campaign.status in (Campaign.Status.APPROVED, Campaign.Status.SENDING) or (
            self.open > 0 and self.campaign.status != Campaign.Status.CANCELLED
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign.pk,
            "status": self.campaign.status,
            "status_label": self.campaign.get_status_display(),
            "total": self.total,
            "sent": self.sent,
            "percent": self.percent,
            "stages": [{"key": s.key, "label": s.label, "count": s.count} for s in self.stages],
            "per_minute": round(self.per_minute_rate, 1),
            "eta": _iso(self.eta),
            "started_at": _iso(self.campaign.sending_started_at),
            "finished_at": _iso(self.finished_at),
            "duration": human_duration(self.duration),
            "live": self.live,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def human_duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def fold_counts(campaign_id: int) -> None:
    """Replace a campaign's counter rows by one per (status, minute), in one statement.

    Safe beside running workers and other readers: the DELETE sees only rows committed
    before it, so rows the triggers add meanwhile stay; a second fold running at the same
    time waits for the first and then finds its rows gone. PostgreSQL only: SQLite's rows
    are already one per (status, minute).
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            WITH gone AS (
              DELETE FROM campaigns_deliverycount WHERE campaign_id = %s
              RETURNING status, minute, n
            )
            INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
            SELECT %s, status, minute, sum(n) FROM gone GROUP BY status, minute
            HAVING sum(n) <> 0
            """,
            [campaign_id, campaign_id],
        )


def status_counts(campaign_id: int) -> dict[str, int]:
    """Deliveries per ledger status (absent: none), from the counters."""
    rows = (
        DeliveryCount.objects.filter(campaign_id=campaign_id)
        .values_list("status")
        .annotate(total=Sum("n"), rows=Count("id"))
    )
    counts: dict[str, int] = {}
    piled = 0
    for status, total, n_rows in rows:
        piled += n_rows
        if total:
            counts[status] = int(total)
    if piled > FOLD_THRESHOLD and connection.vendor == "postgresql":
        fold_counts(campaign_id)
    return counts


def _per_minute(campaign_id: int, since: datetime) -> list[tuple[datetime, int, int]]:
    rows = (
        DeliveryCount.objects.filter(campaign_id=campaign_id, minute__gte=since)
        .values_list("minute", "status")
        .annotate(total=Sum("n"))
    )
    sent: dict[datetime, int] = defaultdict(int)
    problems: dict[datetime, int] = defaultdict(int)
    for minute, status, total in rows:
        stage = STAGE_OF.get(status)
        # Inflow only: a minute's "sent" is what was accepted in it.
        if stage == "sent" and total > 0:
            sent[minute] += int(total)
        elif stage in PROBLEMS and total > 0:
            problems[minute] += int(total)
    minutes = sorted(set(sent) | set(problems))
    return [(m, sent[m], problems[m]) for m in minutes]


def campaign_progress(campaign: Campaign, *, now: datetime | None = None) -> Progress:
    now = now or timezone.now()
    counts = status_counts(campaign.pk)
    stages = [
        Stage(key, label, sum(counts.get(s, 0) for s in statuses))
        for key, label, statuses in PIPELINE
    ]
    total = sum(counts.values()) or campaign.recipient_count
    per_minute = (
        _per_minute(campaign.pk, _minute(now) - timedelta(minutes=CHART_MINUTES))
        if campaign.sending_started_at
        else []
    )
    return Progress(campaign=campaign, total=total, stages=stages, per_minute=per_minute, now=now)


def progress_for(campaigns: list[Campaign]) -> dict[int, Progress]:
    """Progress of several campaigns (a list page, the home page): one query for all."""
    ids = [c.pk for c in campaigns]
    by_campaign: dict[int, dict[str, int]] = defaultdict(dict)
    rows = (
        DeliveryCount.objects.filter(campaign_id__in=ids)
        .values_list("campaign_id", "status")
        .annotate(total=Sum("n"))
    )
    for campaign_id, status, total in rows:
        if total:
            by_campaign[campaign_id][status] = int(total)
    result = {}
    for campaign in campaigns:
        counts = by_campaign.get(campaign.pk, {})
        stages = [
            Stage(key, label, sum(counts.get(s, 0) for s in statuses))
            for key, label, statuses in PIPELINE
        ]
        result[campaign.pk] = Progress(
            campaign=campaign,
            total=sum(counts.values()) or campaign.recipient_count,
            stages=stages,
        )
    return result


def chart_svg_points(progress: Progress, width: int = 600, height: int = 120) -> dict[str, Any]:
    """Bars for the server-drawn SVG chart: one per minute, sent above, problems in red."""
    series = progress.per_minute
    if not series:
        return {"bars": [], "width": width, "height": height, "peak": 0}
    first = series[0][0]
    last = max(series[-1][0], _minute(progress.now))
    slots = min(int((last - first).total_seconds() // 60) + 1, CHART_MINUTES + 1)
    start = last - timedelta(minutes=slots - 1)
    peak = max(max(s + p for _, s, p in series), 1)
    slot_width = width / slots
    bars = []
    for minute, sent, problems in series:
        if minute < start:
            continue
        index = int((minute - start).total_seconds() // 60)
        sent_h = height * sent / peak
        prob_h = height * problems / peak
        bars.append(
            {
                "x": round(index * slot_width + 1, 1),
                "w": round(max(slot_width - 2, 1), 1),
                "sent_y": round(height - sent_h, 1),
                "sent_h": round(sent_h, 1),
                "prob_y": round(height - sent_h - prob_h, 1),
                "prob_h": round(prob_h, 1),
                "label": f"{timezone.localtime(minute):%H:%M}: {sent} sent"
                + (f", {problems} failed/blocked/unknown" if problems else ""),
            }
        )
    return {
        "bars": bars,
        "width": width,
        "height": height,
        "peak": peak,
        "start": start,
        "end": last,
    }
