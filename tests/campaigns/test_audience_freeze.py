"""Freezing the audience: the one-statement path gives exactly the rows and hash of the
row-by-row path (on PostgreSQL they differ in how, never in what)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
from django.db import connection

from accounts.models import User
from campaigns import audience
from campaigns.audience import _freeze_row_by_row, freeze_audience
from campaigns.digests import AUDIENCE_HASH_START
from campaigns.models import Campaign, Delivery, Suppression
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
    # Lists and objects are not strings, however many strings they hold.
    make_member("lists@example.org", attributes={"tags": ["a", "b"], "none": [], "ok": "y"})
    make_member("nested@example.org", attributes={"o": {"k": "v"}, "ok": "z"})
    # An attribute named like an account field loses to the account field.
    make_member("first@example.org", first_name="Real", attributes={"first_name": "Fake"})
    make_member("gone@example.org")
    make_member("inactive@example.org", is_active=False)
    add_suppression("gone@example.org", Suppression.Reason.MANUAL, source="test")

    fast, slow = make_campaign(olivia), make_campaign(olivia, name="Same audience")
    count, digest, summary = freeze_audience(fast)
    slow_count, slow_digest, slow_summary = _freeze_row_by_row(slow)

    assert (count, digest) == (slow_count, slow_digest) == (6, digest)
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
    lists, nested = by_address["lists@example.org"], by_address["nested@example.org"]
    assert isinstance(lists, dict) and isinstance(nested, dict)
    assert lists["ok"] == "y" and "tags" not in lists and "none" not in lists
    assert nested["ok"] == "z" and "o" not in nested
    assert Delivery.objects.filter(campaign=fast, status="pending").count() == 6


AWKWARD = {
    "a": "Zoë 山田 太郎 🙂",
    "bb": 'say "hi" \\ back/slash',
    "B": "tab\there, two\nlines, \x01 and \x1f",
    "é": "del \x7f, line separator \u2028, é vs e\u0301",
    "Z": "",
    "zz": "<b>&amp;</b>",
    "ä": "{}[]:,",
}


def test_the_database_writes_the_hashed_data_exactly_as_python_does(
    olivia: User, make_member: Callable[..., User], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL the frozen rows' data is written in canonical JSON by the database
    # and hashed as text; on SQLite both paths hash in Python. Either way: one hash.
    make_member("awk@example.org", first_name='Jane "JJ"', attributes=AWKWARD)
    make_member("Mixed.Case@Example.org", first_name="Ünïcode", attributes={"k": "\\u0041"})
    hashed_in_database: list[int] = []
    real = audience._hash_in_database

    def spy(campaign: Campaign) -> str:
        hashed_in_database.append(campaign.pk)
        return real(campaign)

    monkeypatch.setattr(audience, "_hash_in_database", spy)
    fast, slow = make_campaign(olivia), make_campaign(olivia, name="Same audience")
    count, digest, _ = freeze_audience(fast)
    slow_count, slow_digest, _ = _freeze_row_by_row(slow)
    assert (count, digest) == (slow_count, slow_digest) == (2, digest)
    assert hashed_in_database == ([fast.pk] if connection.vendor == "postgresql" else [])
    # And the hash is the documented one: canonical JSON lines, recomputed here.
    expected = hashlib.sha256(AUDIENCE_HASH_START)
    for user_id, address, data in _rows(fast.pk):
        expected.update(
            json.dumps(
                [user_id, address.lower(), data],
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
            + b"\n"
        )
    assert digest == expected.hexdigest()
