"""The campaign's life in one table, and the one way to move a campaign along it.

Every change of `Campaign.status` goes through this module: `TRANSITIONS` says, for each
action, from which states, to which state, who may do it (a role permission, or nobody
but the system), which who/when stamps it sets and what audit event it writes.

- `transition()` is for people: it checks the role, locks the row, checks the state,
  lets the caller add its own checks and fields, then sets the status and stamps, saves
  exactly the changed fields and writes the audit event, all in one transaction.
- `transition_if()` is for the worker and the sweeper: a conditional UPDATE on the
  current state (no lock to wait for), and the audit event only when the row moved.

The README's state table is `transitions_markdown()`; a test keeps the two identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.roles import ROLES
from audit.chain import record_audit

from .models import Campaign
from .permissions import require_role

Status = Campaign.Status


@dataclass(frozen=True)
class Transition:
    action: str
    sources: tuple[str, ...]
    target: str
    # The role permission it takes, or None: only the system (worker, sweeper) does it.
    permission: str | None
    # What the refusal says the user may not do: "Your role does not allow you to ...".
    verb: str
    # Sets `<stamp>_by` (where the model has it and a person acts) and `<stamp>_at`.
    stamp: str
    audit: str


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition(
            "edit",
            (Status.DRAFT, Status.IN_REVIEW, Status.APPROVED),
            Status.DRAFT,
            "campaigns.change_campaign",
            "edit campaigns",
            "edited",
            "campaign.edited",
        ),
        Transition(
            "submit",
            (Status.DRAFT,),
            Status.IN_REVIEW,
            "campaigns.submit_campaign",
            "submit campaigns for review",
            "submitted",
            "campaign.submitted",
        ),
        Transition(
            "approve",
            (Status.IN_REVIEW,),
            Status.APPROVED,
            "campaigns.approve_campaign",
            "approve campaigns",
            "approved",
            "campaign.approved",
        ),
        Transition(
            "reject",
            (Status.IN_REVIEW,),
            Status.DRAFT,
            "campaigns.approve_campaign",
            "reject campaigns",
            "rejected",
            "campaign.rejected",
        ),
        Transition(
            "start",
            (Status.APPROVED,),
            Status.SENDING,
            None,
            "start sending",
            "sending_started",
            "campaign.sending_started",
        ),
        Transition(
            "pause",
            (Status.APPROVED, Status.SENDING),
            Status.PAUSED,
            "campaigns.operate_campaign",
            "pause sending",
            "paused",
            "campaign.paused",
        ),
        Transition(
            "guard_pause",
            (Status.APPROVED, Status.SENDING),
            Status.PAUSED,
            None,
            "pause sending",
            "paused",
            "campaign.paused_by_guard",
        ),
        Transition(
            "resume",
            (Status.PAUSED,),
            Status.SENDING,
            "campaigns.operate_campaign",
            "resume sending",
            "resumed",
            "campaign.resumed",
        ),
        Transition(
            "complete",
            (Status.SENDING,),
            Status.SENT,
            None,
            "complete campaigns",
            "completed",
            "campaign.sent",
        ),
        Transition(
            "reopen",
            (Status.SENT,),
            Status.SENDING,
            None,
            "reopen campaigns",
            "",
            "campaign.reopened",
        ),
        Transition(
            "cancel",
            (Status.DRAFT, Status.IN_REVIEW, Status.APPROVED, Status.SENDING, Status.PAUSED),
            Status.CANCELLED,
            "campaigns.operate_campaign",
            "cancel campaigns",
            "cancelled",
            "campaign.cancelled",
        ),
    )
}

_FIELD_NAMES = frozenset(f.name for f in Campaign._meta.get_fields())


def _stamps(t: Transition, by: User | None) -> dict[str, Any]:
    if not t.stamp:
        return {}
    stamps: dict[str, Any] = {f"{t.stamp}_at": timezone.now()}
    if by is not None and f"{t.stamp}_by" in _FIELD_NAMES:
        stamps[f"{t.stamp}_by"] = by
    return stamps


@dataclass
class Change:
    """A transition under way: the locked campaign, and what the caller adds to it."""

    campaign: Campaign
    previous: str
    # Further fields the caller set on `campaign`, saved with the status and stamps.
    fields: set[str] = field(default_factory=set)
    # The audit event's data.
    data: dict[str, Any] = field(default_factory=dict)

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self.campaign, name, value)
        self.fields.update(values)


@contextmanager
def transition(campaign: Campaign, action: str, *, by: User) -> Iterator[Change]:
    """Apply `action` to `campaign` on behalf of `by`, or raise a TransitionError.

    The body of the `with` runs with the row locked and its state checked; it may raise
    to refuse (nothing is saved) or add fields and audit data to the change.
    """
    t = TRANSITIONS[action]
    if t.permission is not None:
        require_role(by, t.permission, t.verb)
    with transaction.atomic():
        locked = (
            Campaign.objects.select_related("sender")
            .select_for_update(of=("self",))
            .get(pk=campaign.pk)
        )
        locked.require_status(*t.sources)
        change = Change(campaign=locked, previous=locked.status)
        yield change
        change.set(status=t.target, **_stamps(t, by))
        locked.save(update_fields=sorted(change.fields))
        record_audit(t.audit, actor=by, obj=locked, data=change.data)


def transition_if(
    campaign_id: int,
    action: str,
    *,
    by: User | None = None,
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> bool:
    """Apply `action` if the campaign is still in one of its source states; audit if it moved.

    One conditional UPDATE: two workers racing to complete or pause the same campaign
    cannot both succeed, and neither waits on a lock.
    """
    t = TRANSITIONS[action]
    with transaction.atomic():
        # The caller's values win over the stamps (a launch passes its own `now`).
        moved = Campaign.objects.filter(pk=campaign_id, status__in=t.sources).update(
            status=t.target, **{**_stamps(t, by), **changes}
        )
        if moved:
            record_audit(t.audit, actor=by, obj=Campaign(pk=campaign_id), data=data)
    return bool(moved)


def roles_allowed(t: Transition) -> list[str]:
    """The role groups whose permissions include the transition's, in ROLES order."""
    if t.permission is None:
        return []
    return [role for role, perms in ROLES.items() if t.permission in perms]


def transitions_markdown() -> str:
    """The transition table as the README shows it."""
    lines = [
        "| action | from | to | who |",
        "|---|---|---|---|",
    ]
    for t in TRANSITIONS.values():
        sources = ", ".join(f"`{s}`" for s in t.sources)
        who = ", ".join(roles_allowed(t)) or "the system"
        lines.append(f"| {t.action} | {sources} | `{t.target}` | {who} |")
    return "\n".join(lines) + "\n"
