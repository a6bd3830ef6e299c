"""Writing and verifying the audit chain."""

from __future__ import annotations

import json
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from .anchor import ANCHORED_ACTIONS, anchor_after_commit
from .models import GENESIS_HASH, AuditChainHead, AuditEvent


def record_audit(
    action: str,
    *,
    actor: Any = None,
    obj: models.Model | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction.

    The chain head row is locked for the rest of the transaction, which serializes
    writers: two concurrent events can never both link to the same predecessor. A
    decision (`ANCHORED_ACTIONS`) is also anchored outside the database once it commits.
    """
    payload = json.loads(json.dumps(data or {}, default=str))
    with transaction.atomic():
        AuditChainHead.objects.get_or_create(pk=1)
        head = AuditChainHead.objects.select_for_update().get(pk=1)
        event = AuditEvent(
            seq=head.seq + 1,
            created_at=timezone.now(),
            actor_id=getattr(actor, "pk", None),
            actor_label=str(getattr(actor, "username", "") or actor or "system"),
            action=action,
            object_type=obj._meta.label_lower if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            data=payload,
            prev_hash=head.hash,
        )
        event.hash = event.compute_hash()
        event.save()
        head.seq = event.seq
        head.hash = event.hash
        head.save(update_fields=["seq", "hash"])
        if action in ANCHORED_ACTIONS:
            anchor_after_commit()
    return event


def first_broken_link(chunk_size: int = 2000) -> tuple[int, str] | None:
    """(seq, why) of the first event whose link or hash does not hold, or None if all hold."""
    expected_prev = GENESIS_HASH
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
