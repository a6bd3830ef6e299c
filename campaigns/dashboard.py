"""The home page at /admin/: what waits for this person, and how the sends are going."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from accounts.models import User

from .models import Approval, Campaign, SendingSwitch
from .progress import Progress, progress_for

IN_FLIGHT = (Campaign.Status.APPROVED, Campaign.Status.SENDING, Campaign.Status.PAUSED)
FINISHED = (Campaign.Status.SENT, Campaign.Status.CANCELLED)
RECENT_DAYS = 14
LIST_LIMIT = 10


@dataclass
class Home:
    user: User
    is_ops: bool
    is_compliance: bool
    can_halt: bool
    switch: SendingSwitch
    review_queue: list[Campaign] = field(default_factory=list)
    review_queue_total: int = 0
    my_drafts: list[Campaign] = field(default_factory=list)
    rejected: list[Campaign] = field(default_factory=list)
    in_flight: list[tuple[Campaign, Progress]] = field(default_factory=list)
    finished: list[tuple[Campaign, Progress]] = field(default_factory=list)
    guard_paused: list[Campaign] = field(default_factory=list)


def build_home(user: User) -> Home:
    home = Home(
        user=user,
        is_ops=user.has_role_perm("campaigns.submit_campaign"),
        is_compliance=user.has_role_perm("campaigns.approve_campaign"),
        can_halt=user.has_role_perm("campaigns.emergency_stop"),
        switch=SendingSwitch.get(),
    )
    base = Campaign.objects.select_related("author", "submitted_by", "rejected_by")
    if home.is_compliance:
        queue = base.filter(status=Campaign.Status.IN_REVIEW).order_by("submitted_at")
        home.review_queue_total = queue.count()
        home.review_queue = list(queue[:LIST_LIMIT])
    if home.is_ops:
        last_comment = Approval.objects.filter(
            campaign=OuterRef("pk"), decision=Approval.Decision.REJECTED
        ).order_by("-created_at")
        drafts = base.filter(status=Campaign.Status.DRAFT).annotate(
            rejection_comment=Subquery(last_comment.values("comment")[:1])
        )
        home.my_drafts = list(
            drafts.filter(author=user, rejected_at__isnull=True).order_by("-created_at")[
                :LIST_LIMIT
            ]
        )
        home.rejected = list(
            drafts.filter(rejected_at__isnull=False).order_by("-rejected_at")[:LIST_LIMIT]
        )
    flying = list(base.filter(status__in=IN_FLIGHT).order_by("-approved_at")[:LIST_LIMIT])
    since = timezone.now() - timedelta(days=RECENT_DAYS)
    done = list(
        base.filter(status__in=FINISHED)
        .exclude(completed_at__lt=since)
        .exclude(cancelled_at__lt=since)
        .filter(sending_started_at__isnull=False)
        .order_by("-completed_at", "-cancelled_at")[:LIST_LIMIT]
    )
    progress = progress_for(flying + done)
    home.in_flight = [(c, progress[c.pk]) for c in flying]
    home.finished = [(c, progress[c.pk]) for c in done]
    # Paused with nobody's name on it: the guard (or the system) stopped it.
    home.guard_paused = [
        c for c in flying if c.status == Campaign.Status.PAUSED and c.paused_by_id is None
    ]
    return home
