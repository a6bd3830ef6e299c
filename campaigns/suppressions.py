"""Suppressions: addresses that must not receive some or all campaigns.

Every change goes through these functions so that it is audited in the same transaction.
Unsubscribes silence announcements only; hard bounces, complaints and manual entries
silence every category (see `Suppression.applies_to`).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from accounts.models import User
from accounts.validators import normalize_address, single_address_error
from audit.chain import record_audit

from .models import Campaign, Suppression

# Reasons that may replace an existing `unsubscribed` row. An unsubscribe only silences
# announcements; a bounce, a complaint or an operator's decision silences everything, so
# keeping the weaker row would let service notices go to an address that must not get them.
STRONG_REASONS = frozenset(
    {
        Suppression.Reason.HARD_BOUNCE,
        Suppression.Reason.COMPLAINT,
        Suppression.Reason.MANUAL,
    }
)


def _details(suppression: Suppression) -> dict[str, Any]:
    return {
        "address": suppression.address,
        "reason": suppression.reason,
        "source": suppression.source,
        "created_at": suppression.created_at.isoformat() if suppression.created_at else None,
        "created_by": suppression.created_by.username if suppression.created_by else None,
    }


def add_suppression(
    address: str, reason: str, *, source: str, by: User | None = None
) -> Suppression | None:
    """Suppress `address`; return the row created or upgraded, or None if nothing changed.

    Idempotent: an existing suppression is kept as it is, except that a stronger reason
    (hard bounce, complaint, manual) upgrades an `unsubscribed` row. None is also returned
    when `address` is not one bare address (a provider event with no usable recipient):
    nothing is stored then.
    """
    if reason not in Suppression.Reason.values:
        raise ValueError(f"Unknown suppression reason {reason!r}.")
    normalized = normalize_address(address or "")
    if single_address_error(normalized) is not None:
        return None
    source = source[:200]
    with transaction.atomic():
        existing = Suppression.objects.select_for_update().filter(address=normalized).first()
        if existing is None:
            try:
                # A savepoint: two concurrent requests for a new address both get here, one
                # insert wins and the other falls through to the "existing" branch.
                with transaction.atomic():
                    created = Suppression.objects.create(
                        address=normalized, reason=reason, source=source, created_by=by
                    )
            except IntegrityError:
                existing = Suppression.objects.select_for_update().get(address=normalized)
            else:
                record_audit("suppression.added", actor=by, obj=created, data=_details(created))
                return created
        if existing.reason == Suppression.Reason.UNSUBSCRIBED and reason in STRONG_REASONS:
            previous = _details(existing)
            existing.reason = reason
            existing.source = source
            existing.created_by = by
            existing.save(update_fields=["reason", "source", "created_by"])
            record_audit(
                "suppression.upgraded",
                actor=by,
                obj=existing,
                data={**_details(existing), "previous": previous},
            )
            return existing
    return None


class RemovalReasonRequired(ValueError):
    """Removing a suppression needs a written reason (it may let mail reach a complainer)."""


def remove_suppression(suppression: Suppression, *, by: User, reason: str) -> None:
    """Delete a suppression, recording who removed it, why, and what the row said."""
    reason = (reason or "").strip()
    if not reason:
        raise RemovalReasonRequired("Give a reason for removing this suppression.")
    with transaction.atomic():
        row = Suppression.objects.select_for_update().filter(pk=suppression.pk).first()
        if row is None:
            return  # removed by someone else meanwhile: their removal was audited
        # Audited before the delete, while the row still has its primary key.
        record_audit(
            "suppression.removed",
            actor=by,
            obj=row,
            data={**_details(row), "removal_reason": reason},
        )
        row.delete()


def is_suppressed(address: str, category: str) -> bool:
    """Whether a campaign of `category` must skip `address`."""
    reasons = _reasons_for(category)
    return Suppression.objects.filter(
        address=normalize_address(address), reason__in=reasons
    ).exists()


def suppressed_among(addresses: list[str], category: str) -> set[str]:
    """Which of `addresses` (normalized) a campaign of `category` must skip: one query."""
    normalized = {normalize_address(address) for address in addresses}
    if not normalized:
        return set()
    return set(
        Suppression.objects.filter(
            address__in=sorted(normalized), reason__in=_reasons_for(category)
        ).values_list("address", flat=True)
    )


def suppressed_queryset(category: str) -> QuerySet[Suppression]:
    """The suppressions that apply to a campaign of `category`."""
    return Suppression.objects.filter(reason__in=_reasons_for(category))


def suppressed_addresses(category: str) -> set[str]:
    """Every (lower-case) address a campaign of `category` must skip."""
    return set(suppressed_queryset(category).values_list("address", flat=True))


def _reasons_for(category: str) -> list[str]:
    # Mirrors Suppression.applies_to, expressed as a filter so it runs in the database.
    if category == Campaign.Category.ANNOUNCEMENT:
        return list(Suppression.Reason.values)
    return [r for r in Suppression.Reason.values if r != Suppression.Reason.UNSUBSCRIBED]
