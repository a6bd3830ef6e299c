"""The audit chain: append-only, hash-linked, verifiable."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.chain import record_audit
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _events(n: int) -> list[AuditEvent]:
    return [record_audit("test.event", data={"n": i, "name": "Zoë, “quoted”"}) for i in range(n)]


def test_events_link_to_their_predecessor() -> None:
    events = _events(3)
    assert events[0].prev_hash == "0" * 64
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert [e.seq for e in events] == [1, 2, 3]


def test_verify_audit_passes_on_a_clean_history(capsys: pytest.CaptureFixture[str]) -> None:
    _events(5)
    call_command("verify_audit")
    assert "5 events verified" in capsys.readouterr().out


def test_verify_audit_names_the_altered_row() -> None:
    events = _events(5)
    if connection.vendor == "postgresql":
        # The trigger refuses the change; an attacker with table-owner rights disables it first.
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only"
            )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET data = %s WHERE seq = %s",
            ['{"n": 999}', events[2].seq],
        )
    with pytest.raises(
        CommandError, match=r"broken at event #3: its contents do not match its hash"
    ):
        call_command("verify_audit")


def test_verify_audit_notices_a_deleted_row() -> None:
    events = _events(4)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only"
            )
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = %s", [events[1].seq])
    with pytest.raises(CommandError, match=r"event #2 is missing"):
        call_command("verify_audit")


def test_the_orm_refuses_to_change_or_delete_an_event() -> None:
    event = _events(1)[0]
    with pytest.raises(ValueError):
        event.save()
    with pytest.raises(ValueError):
        event.delete()


@pytest.mark.needs_postgres
def test_postgres_trigger_refuses_update_and_delete() -> None:
    event = _events(1)[0]
    for sql in (
        "UPDATE audit_auditevent SET action = 'forged' WHERE seq = %s",
        "DELETE FROM audit_auditevent WHERE seq = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [event.seq])
    assert AuditEvent.objects.get(seq=event.seq).action == "test.event"
