"""Where a test send may go: a few staff addresses, never an audience member's.

A test send carries draft content nobody has reviewed, so it may reach only the people
who work on it: the address of an active staff account, or one in an internal test
domain (TEST_SEND_INTERNAL_DOMAINS), at most TEST_SEND_MAX_SEEDS of them. An address
that belongs to an audience member is refused even inside an internal domain. The admin
form checks this when seeds are saved, and the test send checks it again before sending.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.db.models.functions import Lower

from .models import User
from .validators import normalize_address, single_address_error


def seed_lines(text: str) -> list[str]:
    """The seed addresses written in a seed field, one per non-blank line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def internal_domains() -> set[str]:
    return {domain.strip().lower().lstrip("@") for domain in settings.TEST_SEND_INTERNAL_DOMAINS}


def seed_address_problems(addresses: Sequence[str]) -> list[str]:
    """Why these addresses may not receive test sends, one sentence each (empty: they may)."""
    problems: list[str] = []
    limit: int = settings.TEST_SEND_MAX_SEEDS
    if len(addresses) > limit:
        problems.append(f"At most {limit} seed addresses are allowed; there are {len(addresses)}.")
    wellformed: list[str] = []
    for address in addresses:
        error = single_address_error(address)
        if error is None:
            wellformed.append(address)
        else:
            problems.append(f"“{address}” {error}.")
    keys = {normalize_address(address) for address in wellformed}
    holders = {
        key: (is_staff, is_active)
        for key, is_staff, is_active in User.objects.annotate(key=Lower("email"))
        .filter(key__in=keys)
        .values_list("key", "is_staff", "is_active")
    }
    domains = internal_domains()
    for address in wellformed:
        holder = holders.get(normalize_address(address))
        in_domain = address.rpartition("@")[2].lower() in domains
        if holder is not None and not holder[0]:
            problems.append(
                f"“{address}” belongs to an audience member: test sends go to staff only."
            )
        elif holder is not None and holder[1]:
            continue  # an active staff account
        elif in_domain:
            continue
        elif holder is not None:
            problems.append(f"“{address}” belongs to a deactivated staff account.")
        else:
            where = (
                " nor in an internal test domain (" + ", ".join(sorted(domains)) + ")"
                if domains
                else ""
            )
            problems.append(f"“{address}” is not the address of an active staff account{where}.")
    return problems
