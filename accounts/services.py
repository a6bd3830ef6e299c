"""What may be done to a staff account, and by whom. The admin and the commands call these.

The rules, so that no single person can get around the two-person rule:

- nobody changes their own roles, superuser, staff or active flag;
- the Compliance role and the superuser flag are only requested here: they take effect
  when a Compliance member who is neither the requester nor the grantee confirms;
- only its owner chooses the password of a Compliance member or superuser, or changes its
  address (a link to choose a password goes to that address); an Admin can send the
  owner such a link, or deactivate the account;
- when a grant is confirmed, a password that someone else could know is disabled and the
  owner gets a link to choose their own.

Every change is an event in the hash-chained audit, in the same transaction, with who,
what changed and when; never a password or its hash.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import EmailMessage
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from audit.chain import record_audit

from . import events
from .models import RoleGrant, User
from .roles import COMPLIANCE, ROLES

# Flags nobody sets on their own account: with them one person could lift themselves.
ACCESS_FLAGS = ("is_active", "is_staff", "is_superuser")
# Audited as "user.changed" with old and new values.
PROFILE_FIELDS = ("username", "first_name", "last_name", "locale", "time_zone", "attributes")


class AccountRefused(Exception):
    """A change to an account that the rules do not allow; the message says why."""


@dataclass
class AccountChange:
    user: User
    # Grants this change asked for instead of applying them.
    requested: list[RoleGrant] = field(default_factory=list)


def _who(user: User, **data: Any) -> dict[str, Any]:
    return {"username": user.username, **data}


def protected_password_refusal(user: User) -> str:
    return (
        f"Only {user.username} can choose the password of a Compliance member or superuser. "
        "Send them a link to choose it, or deactivate the account."
    )


# --- Creating and editing -------------------------------------------------------------------


def create_account(
    user: User, *, by: User | None, source: str, roles: Collection[str] = ()
) -> User:
    """Save a new account; a usable password on it was chosen by its creator.

    `roles` are given with it: only the installation (a command, `seed_demo`) does that;
    the admin's add form has none.
    """
    usable = user.has_usable_password()
    with transaction.atomic():
        user.attribute_password(by if usable else None, owner_only=False)
        user.save()
        if roles:
            user.groups.set(Group.objects.filter(name__in=roles))
        record_audit(
            events.CREATED,
            actor=by,
            obj=user,
            data=_who(
                user,
                email=user.email,
                is_staff=user.is_staff,
                is_active=user.is_active,
                is_superuser=user.is_superuser,
                password="chosen by the creator" if usable else "none",
                roles=sorted(roles),
                source=source,
            ),
        )
    return user


def update_account(user: User, *, by: User, roles: Collection[str] | None = None) -> AccountChange:
    """Save an edit of `user` (new field values set on it, unsaved) and its roles.

    `roles` names the role groups it should hold (None: unchanged). Ticking Compliance
    or superuser asks for a grant instead of applying it.
    """
    with transaction.atomic():
        before = User.objects.select_for_update().get(pk=user.pk)
        held = set(before.groups.values_list("name", flat=True))
        wanted = set(held if roles is None else roles)
        own = user.pk == by.pk
        if own:
            changed = [
                name for name in ACCESS_FLAGS if getattr(user, name) != getattr(before, name)
            ]
            if changed or wanted != held:
                raise AccountRefused(
                    "You cannot change your own roles, superuser, staff or active status: "
                    "another Admin must do it."
                )
        protected = before.is_superuser or COMPLIANCE in held
        if protected and not own and user.email.lower() != before.email.lower():
            raise AccountRefused(
                f"{before.username} is a Compliance member or superuser: only they may change "
                "their address, because a link to choose a password goes to it. Remove the "
                "role first, then change the address and grant the role again."
            )
        change = AccountChange(user)
        if user.is_superuser and not before.is_superuser:
            user.is_superuser = False
            change.requested.append(_request_grant(user, RoleGrant.Kind.SUPERUSER, by=by))
        if COMPLIANCE in wanted - held:
            wanted.discard(COMPLIANCE)
            change.requested.append(_request_grant(user, RoleGrant.Kind.COMPLIANCE, by=by))
        if user.email != before.email and not own:
            # The address that proved the owner chose the password now belongs to whoever
            # typed the new one.
            user.password_owner_only = False
        user.save()
        if wanted != held:
            user.groups.set(Group.objects.filter(name__in=wanted))
        record_account_changes(before, user, held=held, wanted=wanted, by=by)
    return change


def record_account_changes(
    before: User, after: User, *, held: set[str], wanted: set[str], by: User | None
) -> None:
    """Audit what differs between two states of an account (roles: `held` -> `wanted`)."""
    profile = {
        name: [getattr(before, name), getattr(after, name)]
        for name in PROFILE_FIELDS
        if getattr(before, name) != getattr(after, name)
    }
    if profile:
        record_audit(events.CHANGED, actor=by, obj=after, data=_who(after, changes=profile))
    if before.email != after.email:
        record_audit(
            events.EMAIL_CHANGED,
            actor=by,
            obj=after,
            data=_who(after, old=before.email, new=after.email),
        )
    if before.seed_addresses != after.seed_addresses:
        record_audit(
            events.SEEDS_CHANGED,
            actor=by,
            obj=after,
            data=_who(
                after,
                old=before.seed_addresses.split(),
                new=after.seed_addresses.split(),
            ),
        )
    flags = (
        ("is_staff", events.STAFF_GRANTED, events.STAFF_REVOKED),
        ("is_active", events.REACTIVATED, events.DEACTIVATED),
        ("is_superuser", None, events.SUPERUSER_REVOKED),
    )
    for name, turned_on, turned_off in flags:
        old, new = getattr(before, name), getattr(after, name)
        action = turned_on if new and not old else turned_off if old and not new else None
        if action is not None:
            record_audit(action, actor=by, obj=after, data=_who(after))
    if wanted - held:
        record_audit(
            events.ROLES_GRANTED, actor=by, obj=after, data=_who(after, roles=sorted(wanted - held))
        )
    if held - wanted:
        record_audit(
            events.ROLES_REVOKED, actor=by, obj=after, data=_who(after, roles=sorted(held - wanted))
        )


# --- Grants that take a second person -------------------------------------------------------


def request_grant(user: User, kind: str, *, by: User) -> RoleGrant:
    """Ask for `kind` (Compliance or superuser) for `user`; it waits for a confirmation."""
    with transaction.atomic():
        return _request_grant(user, kind, by=by)


def _request_grant(user: User, kind: str, *, by: User) -> RoleGrant:
    if user.pk == by.pk:
        raise AccountRefused("You cannot ask for a role for yourself: another Admin must.")
    pending = (
        RoleGrant.objects.select_for_update()
        .filter(user=user, kind=kind, outcome=RoleGrant.Outcome.PENDING)
        .first()
    )
    if pending is not None:
        return pending
    grant = RoleGrant.objects.create(user=user, kind=kind, requested_by=by)
    record_audit(
        events.GRANT_REQUESTED,
        actor=by,
        obj=user,
        data=_who(user, grant=grant.pk, kind=kind),
    )
    return grant


def decide_grant(grant: RoleGrant, *, by: User, confirm: bool, note: str = "") -> RoleGrant:
    """Confirm or refuse a pending grant: a Compliance member, not the requester or grantee.

    On confirmation, a password someone else could know (not chosen by the owner through a
    link to their own address) is disabled, and the owner is sent a link to choose one.
    """
    if not by.has_role_perm("accounts.decide_rolegrant"):
        raise AccountRefused("Only a Compliance member can confirm or refuse a grant.")
    with transaction.atomic():
        grant = RoleGrant.objects.select_for_update().get(pk=grant.pk)
        if grant.outcome != RoleGrant.Outcome.PENDING:
            raise AccountRefused(f"This grant was already {grant.get_outcome_display().lower()}.")
        if by.pk == grant.user_id:
            raise AccountRefused("This grant is for you: another Compliance member must decide it.")
        if by.pk == grant.requested_by_id:
            raise AccountRefused(
                "You asked for this grant: another Compliance member must decide it."
            )
        grant.outcome = RoleGrant.Outcome.CONFIRMED if confirm else RoleGrant.Outcome.REFUSED
        grant.decided_by, grant.decided_at, grant.note = by, timezone.now(), note.strip()
        grant.save(update_fields=["outcome", "decided_by", "decided_at", "note"])
        user = User.objects.select_for_update().get(pk=grant.user_id)
        data = _who(user, grant=grant.pk, kind=grant.kind, requested_by=grant.requested_by_id)
        if not confirm:
            record_audit(
                events.GRANT_REFUSED, actor=by, obj=user, data={**data, "note": grant.note}
            )
            return grant
        if grant.kind == RoleGrant.Kind.COMPLIANCE:
            user.groups.add(Group.objects.get(name=COMPLIANCE))
        else:
            user.is_superuser = True
            user.save(update_fields=["is_superuser"])
        record_audit(events.GRANT_CONFIRMED, actor=by, obj=user, data=data)
        if not user.password_owner_only:
            user.set_unusable_password()
            user.attribute_password(None, owner_only=False)
            user.save(
                update_fields=[
                    "password",
                    "password_set_by",
                    "password_set_at",
                    "password_owner_only",
                ]
            )
            reason = f"{grant.get_kind_display()} was confirmed"
            record_audit(
                events.PASSWORD_DISABLED,
                actor=by,
                obj=user,
                data=_who(user, reason=f"{reason}; someone else could know the password"),
            )
            # After the commit: the mail goes out with no transaction open, and only if the
            # confirmation really happened.
            transaction.on_commit(
                partial(_send_link_after_commit, user.pk, by.pk, f"{reason} for your account"),
                robust=True,
            )
    return grant


# --- Passwords ------------------------------------------------------------------------------


def save_password(user: User, *, by: User, via: str) -> User:
    """Save the password just set (or disabled) on `user` by `by`, and audit it.

    `via` says how: "admin form", "own change" or "link" (the owner, through a link sent
    to their address: the only way a password becomes known to the owner only). Someone
    else may not choose the password of a Compliance member or superuser.
    """
    own = user.pk == by.pk
    with transaction.atomic():
        before = User.objects.select_for_update().get(pk=user.pk)
        if not own and before.is_protected_account():
            raise AccountRefused(protected_password_refusal(before))
        if not user.has_usable_password():
            user.attribute_password(None, owner_only=False)
            action = events.PASSWORD_DISABLED
        elif own:
            # A change from a password someone else knew is still one they could have made.
            user.attribute_password(by, owner_only=via == "link" or before.password_owner_only)
            action = events.PASSWORD_CHANGED
        else:
            user.attribute_password(by, owner_only=False)
            action = events.PASSWORD_SET
        user.save()
        record_audit(action, actor=by, obj=user, data=_who(user, via=via))
    return user


def password_link(user: User) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    path = reverse("admin:accounts_user_password_link", args=[uid, token])
    return f"{settings.PUBLIC_BASE_URL}{path}"


def send_password_link(user: User, *, by: User | None, reason: str) -> None:
    """Mail the owner a link to choose their own password (through the guarded backend).

    The link works once (it is bound to the current password hash) and expires after
    PASSWORD_RESET_TIMEOUT. Nobody but the owner of the address sees it.
    """
    if not (user.is_staff and user.is_active):
        raise AccountRefused(
            f"{user} is not an active staff account: only active staff sign in, so there is "
            "no password to choose."
        )
    days = max(1, settings.PASSWORD_RESET_TIMEOUT // 86400)
    greeting = f"Hello {user.first_name}," if user.first_name else "Hello,"
    body = (
        f"{greeting}\n\n{reason}. Choose your Countersign password here (sign-in name: "
        f"{user.username}). The link works once and for {days} days:\n\n{password_link(user)}\n\n"
        "If you did not expect this message, tell your Countersign administrator.\n"
    )
    EmailMessage("Choose your Countersign password", body, to=[user.email]).send()
    record_audit(
        events.PASSWORD_LINK_SENT, actor=by, obj=user, data=_who(user, to=user.email, reason=reason)
    )


def _send_link_after_commit(user_id: int, by_id: int | None, reason: str) -> None:
    by = User.objects.filter(pk=by_id).first() if by_id is not None else None
    send_password_link(User.objects.get(pk=user_id), by=by, reason=reason)


# --- The first accounts, from the command line ----------------------------------------------


def create_staff_account(
    *, username: str, email: str, roles: Collection[str], first_name: str = ""
) -> User:
    """A staff account made at installation: no password; the owner is sent a link.

    The Compliance role comes this way only while no active Compliance member exists: after
    that, only through a grant that another Compliance member confirms.
    """
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise AccountRefused(f"No such role: {', '.join(unknown)} (roles: {', '.join(ROLES)}).")
    if (
        COMPLIANCE in roles
        and User.objects.filter(is_active=True, groups__name=COMPLIANCE).exists()
    ):
        raise AccountRefused(
            "An active Compliance member exists: give the role in the admin instead (tick "
            "Compliance on the user; another Compliance member confirms it under Role grants)."
        )
    user = User(username=username, email=email, first_name=first_name, is_staff=True)
    user.set_unusable_password()
    user.full_clean()
    return create_account(user, by=None, source="command line", roles=roles)
