"""Who may do what: role permissions and the two-person rule, decided on the server.

Roles are groups (`accounts.roles`); `User.has_role_perm` reads only what they grant, so
being a superuser adds nothing here.

The two-person rule holds against one person with two accounts as well: the approver
may not have authored, edited or submitted the campaign, nor have created, reactivated,
changed the address or set the password of, or given a role or staff access to, anyone
who did. The second half is read from the hash-chained audit, which records every such
act on an account (`accounts.events.CONTROL_ACTIONS`).
"""

from __future__ import annotations

from accounts.events import CONTROL_ACTIONS
from accounts.models import User
from audit.models import AuditEvent

from .models import Campaign, TransitionError, TwoPersonRuleViolation

NOT_A_REVIEWER = "Only a Compliance reviewer can approve or reject."


class PermissionRefused(TransitionError):
    """The user's role does not allow this action."""


def require_role(user: User | None, perm: str, action: str) -> None:
    """Refuse unless one of the user's roles grants `perm` (superuser status grants nothing)."""
    if user is None or not user.has_role_perm(perm):
        raise PermissionRefused(f"Your role does not allow you to {action}.")


def require_second_person(campaign: Campaign, reviewer: User) -> None:
    """The two-person rule: the reviewer is not, and does not control, anyone who worked on it.

    Two queries: the contributors, then the audit events of the reviewer on their accounts.
    """
    if reviewer.pk == campaign.author_id:
        raise TwoPersonRuleViolation("You wrote this campaign; a second person must review it.")
    if reviewer.pk in {campaign.submitted_by_id, campaign.edited_by_id}:
        raise TwoPersonRuleViolation(
            "You edited or submitted this campaign; a second person must review it."
        )
    contributors = set(campaign.contributors.values_list("pk", flat=True))
    if reviewer.pk in contributors:
        raise TwoPersonRuleViolation(
            "You contributed to this campaign; a second person must review it."
        )
    contributors |= {campaign.author_id, campaign.submitted_by_id, campaign.edited_by_id}
    contributors.discard(None)
    touched = (
        AuditEvent.objects.filter(
            actor_id=reviewer.pk,
            object_type=User._meta.label_lower,
            object_id__in=[str(pk) for pk in contributors],
            action__in=list(CONTROL_ACTIONS),
        )
        .order_by("seq")
        .values_list("action", "data")
        .first()
    )
    if touched is not None:
        action, data = touched
        name = data.get("username", "someone") if isinstance(data, dict) else "someone"
        raise TwoPersonRuleViolation(
            f"You {CONTROL_ACTIONS[action]} {name}, who authored, edited or submitted this "
            "campaign; a reviewer with no hand in their account must review it."
        )


def decision_refusal(user: User, campaign: Campaign) -> str | None:
    """Why `user` may not approve or reject `campaign`, or None if they may (for the page)."""
    if not user.has_role_perm("campaigns.approve_campaign"):
        return NOT_A_REVIEWER
    try:
        require_second_person(campaign, user)
    except TwoPersonRuleViolation as exc:
        return str(exc)
    return None


def can_decide(user: User, campaign: Campaign) -> bool:
    """Whether `user` may approve or reject `campaign` (`decision_refusal` says why not)."""
    return decision_refusal(user, campaign) is None
