"""`python manage.py verify_audit`: recompute the audit hash chain and name the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from campaigns.models import AuditChainHead, AuditEvent


def first_broken_link(chunk_size: int = 2000) -> tuple[int, str] | None:
    """(seq, why) of the first event whose link or hash does not hold, or None if all hold."""
    expected_prev = "0" * 64
    expected_seq = 1
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk_size):
        if event.seq != expected_seq:
            return expected_seq, f"event #{expected_seq} is missing (next is #{event.seq})"
        if event.prev_hash != expected_prev:
            return event.seq, "its prev_hash does not match the hash of the event before it"
        if event.compute_hash() != event.hash:
            return event.seq, "its contents do not match its hash (the row was altered)"
        expected_prev = event.hash
        expected_seq += 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and head.seq != expected_seq - 1:
        return (
            expected_seq,
            f"the chain head says #{head.seq} but the last event is #{expected_seq - 1}",
        )
    if head is not None and head.seq and head.hash != expected_prev:
        return head.seq, "the chain head's hash does not match the last event"
    return None


class Command(BaseCommand):
    help = "Recompute the audit chain; exit non-zero naming the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        total = AuditEvent.objects.count()
        broken = first_broken_link()
        if broken is not None:
            seq, why = broken
            raise CommandError(f"Audit chain broken at event #{seq}: {why}.")
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {total} events verified."))
