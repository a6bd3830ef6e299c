"""Who may do what: role permissions and the two-person rule, decided on the server.

Roles are groups (`accounts.roles`); `User.has_role_perm` reads only what they grant, so
being a superuser adds nothing here.
"""

from __future__ import annotations

from accounts.models import User

from .models import Campaign, TransitionError, TwoPersonRuleViolation


class PermissionRefused(TransitionError):
    """The user's role does not allow this action."""


def require_role(user: User | None, perm: str, action: str) -> None:
    """Refuse unless one of the user's roles grants `perm` (superuser status grants nothing)."""
    if user is None or not user.has_role_perm(perm):
        raise PermissionRefused(f"Your role does not allow you to {action}.")


def require_second_person(campaign: Campaign, reviewer: User) -> None:
    """The two-person rule: the reviewer authored, edited and submitted nothing of this campaign."""
    if reviewer.pk == campaign.author_id:
        raise TwoPersonRuleViolation("You wrote this campaign; a second person must review it.")
    if reviewer.pk in {campaign.submitted_by_id, campaign.edited_by_id}:
        raise TwoPersonRuleViolation(
            "You edited or submitted this campaign; a second person must review it."
        )
    if campaign.contributors.filter(pk=reviewer.pk).exists():
        raise TwoPersonRuleViolation(
            "You contributed to this campaign; a second person must review it."
        )


def can_decide(user: User, campaign: Campaign) -> bool:
    """Whether `user` may approve or reject `campaign` (for showing the buttons)."""
    if not user.has_role_perm("campaigns.approve_campaign"):
        return False
    try:
        require_second_person(campaign, user)
    except TwoPersonRuleViolation:
        return False
    return True
