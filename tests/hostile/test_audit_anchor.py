"""Issue 8, point 5: the audit chain had no anchor outside the database.

Someone with write access to the database (table-owner rights: enough to switch off the
append-only trigger on PostgreSQL) deletes the newest events and rewinds the chain head,
or rewrites an event and recomputes every later hash and the head. The chain then holds
inside the database, so `verify_audit` must find it through the signed anchors, naming the
first event that differs; and the periodic anchor must refuse to sign the forgery.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from audit.anchor import AnchorRefused, anchor_chain
from audit.chain import first_broken_link, record_audit
from audit.models import AuditChainHead, AuditEvent
from campaigns import services
from campaigns.models import Campaign
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


def _anchored_chain(n: int = 6) -> list[AuditEvent]:
    events = [record_audit("test.event", data={"n": i}) for i in range(n)]
    anchor_chain()
    return events


def _anchor_bytes() -> bytes:
    return Path(settings.AUDIT_ANCHOR_PATH).read_bytes()


def _with_table_owner_rights() -> None:
    if connection.vendor == "postgresql":
        # The trigger refuses UPDATE and DELETE; a table owner switches it off first.
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only"
            )


def _truncate_to(seq: int) -> None:
    _with_table_owner_rights()
    # A plain queryset, as a hand-written query would be: the app's manager refuses deletes.
    QuerySet(AuditEvent).filter(seq__gt=seq).delete()
    last = AuditEvent.objects.get(seq=seq)
    AuditChainHead.objects.filter(pk=1).update(seq=last.seq, hash=last.hash)


def _rewrite(seq: int, data: dict[str, Any]) -> None:
    """Change one event and recompute its hash, every later one, and the head."""
    _with_table_owner_rights()
    previous = AuditEvent.objects.get(seq=seq - 1).hash if seq > 1 else "0" * 64
    for event in AuditEvent.objects.filter(seq__gte=seq).order_by("seq"):
        event.prev_hash = previous
        if event.seq == seq:
            event.data = data
        event.hash = event.compute_hash()
        AuditEvent.objects.filter(pk=event.pk).update(
            prev_hash=event.prev_hash, data=event.data, hash=event.hash
        )
        previous = event.hash
    AuditChainHead.objects.filter(pk=1).update(hash=previous)


def _verify_refuses() -> str:
    with pytest.raises(CommandError) as refused:
        call_command("verify_audit")
    return str(refused.value)


def test_verify_audit_reports_a_truncated_tail_with_the_first_missing_event() -> None:
    _anchored_chain(6)
    _truncate_to(4)
    assert first_broken_link() is None  # inside the database the chain holds
    anchors = _anchor_bytes()

    message = _verify_refuses()

    assert "Audit chain truncated: event #5 is missing" in message
    assert "covers events up to #6" in message
    assert _anchor_bytes() == anchors
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1, 2, 3, 4]


def test_verify_audit_reports_a_consistently_rewritten_chain_at_the_first_changed_event() -> None:
    _anchored_chain(6)
    _rewrite(3, {"n": "rewritten"})
    assert first_broken_link() is None
    anchors = _anchor_bytes()

    message = _verify_refuses()

    assert "Audit chain rewritten: event #3 differs from the anchored chain" in message
    assert "broken at" not in message
    assert _anchor_bytes() == anchors
    assert AuditEvent.objects.get(seq=3).data == {"n": "rewritten"}


def test_verify_audit_reports_a_truncation_that_new_events_have_covered_up() -> None:
    _anchored_chain(6)
    _truncate_to(4)
    record_audit("test.event", data={"n": "after the truncation"})
    record_audit("test.event", data={"n": "and another"})

    assert "Audit chain rewritten: event #5 differs from the anchored chain" in _verify_refuses()


@pytest.mark.parametrize("tamper", ["truncate", "rewrite"])
def test_the_periodic_anchor_refuses_to_sign_a_tampered_chain(tamper: str) -> None:
    _anchored_chain(6)
    if tamper == "truncate":
        _truncate_to(4)
    else:
        _rewrite(2, {"n": "rewritten"})
    record_audit("test.event", data={"n": "new"})
    anchors = _anchor_bytes()

    with pytest.raises(AnchorRefused):
        anchor_chain()

    assert _anchor_bytes() == anchors


def test_a_forged_or_edited_anchor_line_is_reported() -> None:
    _anchored_chain(3)
    record_audit("test.event")
    anchor_chain()
    path = Path(settings.AUDIT_ANCHOR_PATH)
    first, second = path.read_text().splitlines()
    edited = json.loads(second)
    edited["at"] = (timezone.now() - timedelta(days=30)).isoformat()
    path.write_text(first + "\n" + json.dumps(edited) + "\n")

    message = _verify_refuses()

    assert "1 line(s) do not verify: line 2: its signature does not match" in message


def test_a_removed_anchor_line_is_reported() -> None:
    _anchored_chain(3)
    record_audit("test.event")
    anchor_chain()
    record_audit("test.event")
    anchor_chain()
    path = Path(settings.AUDIT_ANCHOR_PATH)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[2] + "\n")

    message = _verify_refuses()

    assert "line 2 does not follow line 1 (a line was removed, reordered or inserted)" in message


@pytest.fixture
def audience(make_member: Callable[..., User]) -> list[User]:
    return [make_member(f"reader{i}@example.org", first_name="Reader") for i in range(2)]


def test_an_approval_writes_an_anchor_once_it_commits(
    olivia: User,
    rita: User,
    audience: list[User],
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Scheduled for tomorrow, so approving starts no sending in this test.
    campaign = make_campaign(olivia, scheduled_at=timezone.now() + timedelta(days=1))
    campaign = services.submit_for_review(campaign, by=olivia)

    with django_capture_on_commit_callbacks(execute=True):
        services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)

    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.APPROVED
    approved = AuditEvent.objects.get(action="campaign.approved", object_id=str(campaign.pk))
    newest = json.loads(_anchor_bytes().splitlines()[-1])
    head = AuditChainHead.objects.get(pk=1)
    assert (newest["seq"], newest["hash"]) == (head.seq, head.hash)
    assert newest["links"][approved.seq - newest["first"]] == approved.hash
