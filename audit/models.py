"""The audit chain: an append-only, hash-linked record of every decision and transition.

Each event stores the hash of the one before it, so removing, reordering or rewriting
any event breaks every later link. Writers lock the one chain-head row, so two events
written at the same moment can never both link to the same predecessor. On PostgreSQL a
trigger refuses UPDATE and DELETE on the event table as well.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from django.db import models

GENESIS_HASH = "0" * 64


class RetainedQuerySet(models.QuerySet[Any]):
    """A queryset that refuses bulk deletes: rows kept for the record are never deleted by the app.

    Model `delete()` is refused by each model; this closes the other door, `filter().delete()`.
    (On PostgreSQL a trigger refuses the DELETE itself, whatever the query.)
    """

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ValueError(f"{self.model._meta.label} rows are retained; the app never deletes them.")


class AuditChainHead(models.Model):
    """One row: the newest link of the audit chain. Writers lock it, so the chain never forks."""

    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"#{self.seq} {self.hash[:12]}"


class AuditEvent(models.Model):
    """One link of the chain.

    Actor and object are stored as plain values, not foreign keys, so that deleting
    anything never cascades into (or is blocked by) the history.
    """

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=254, blank=True, default="")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    data = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = RetainedQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_event_object")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Audit events are append-only.")

    def compute_hash(self) -> str:
        return chain_hash(
            prev_hash=self.prev_hash,
            seq=self.seq,
            created_at=self.created_at,
            actor_id=self.actor_id,
            actor_label=self.actor_label,
            action=self.action,
            object_type=self.object_type,
            object_id=self.object_id,
            data=self.data,
        )


def chain_hash(
    *,
    prev_hash: str,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any],
) -> str:
    """sha256 over a canonical JSON of one event and its predecessor's hash."""
    canonical = json.dumps(
        {
            "prev": prev_hash,
            "seq": seq,
            "at": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": actor_id,
            "actor": actor_label,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
