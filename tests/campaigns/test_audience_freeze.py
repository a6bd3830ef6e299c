"""Freezing the audience: the one-statement path gives exactly the rows and hash of the
row-by-row path (on PostgreSQL they differ in how, never in what)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accounts.models import User
from campaigns.audience import _freeze_row_by_row, freeze_audience
from campaigns.models import Delivery, Suppression
from campaigns.suppressions import add_suppression
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


def _rows(campaign_id: int) -> list[tuple[int | None, str, object]]:
    return list(
        Delivery.objects.filter(campaign_id=campaign_id)
        .order_by("user_id")
        .values_list("user_id", "address", "recipient_data")
    )


def test_freezing_in_one_statement_matches_the_row_by_row_path(
    olivia: User, make_member: Callable[..., User]
) -> None:
    make_member("Ann.Upper@Example.org", first_name="Ann", attributes={"plan": "gold", "n": 3})
    make_member("zoe@example.org", first_name="Zoë", last_name="Ż", attributes={"plan": None})
    make_member("odd@example.org", attributes=["not", "an", "object"])
    # An attribute named like an account field loses to the account field.
    make_member("first@example.org", first_name="Real", attributes={"first_name": "Fake"})
    make_member("gone@example.org")
    make_member("inactive@example.org", is_active=False)
    add_suppression("gone@example.org", Suppression.Reason.MANUAL, source="test")

    fast, slow = make_campaign(olivia), make_campaign(olivia, name="Same audience")
    count, digest, summary = freeze_audience(fast)
    slow_count, slow_digest, slow_summary = _freeze_row_by_row(slow)

    assert (count, digest) == (slow_count, slow_digest) == (4, digest)
    assert summary.suppressed == slow_summary.suppressed == 1
    assert _rows(fast.pk) == _rows(slow.pk)
    by_address = {address.lower(): data for _user, address, data in _rows(fast.pk)}
    ann = by_address["ann.upper@example.org"]
    assert isinstance(ann, dict)
    # Only string attributes, then the account fields over them.
    assert ann.keys() == {"plan", "first_name", "last_name", "email", "locale"}
    assert ann["plan"] == "gold" and ann["first_name"] == "Ann"
    assert by_address["first@example.org"]["first_name"] == "Real"  # type: ignore[index]
    assert "odd@example.org" in by_address
    assert Delivery.objects.filter(campaign=fast, status="pending").count() == 4
