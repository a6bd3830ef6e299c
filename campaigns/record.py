"""A campaign's compliance record: everything an auditor needs, verifiable offline.

`write_campaign_record()` writes two files into a directory:

- `deliveries.csv`: one row per delivery (outcome, Message-ID, provider id, the frozen
  address and placeholder values), ordered by user id so that the audience hash can be
  recomputed from it as it streams.
- `record.json`: the campaign and its people, the content the digest covers, every approval
  with the sample messages the reviewer saw, test sends, operator actions, provider events,
  a summary of the deliveries, the audit events from the campaign's first to the signed chain
  head, and that signed head.

Sealing: each part of `record.json` under "sections" is hashed (sha256 of its canonical JSON),
and so is every block of `BLOCK_ROWS` CSV rows. Those hashes go into a
`campaign.record_exported` audit event, the chain is anchored, and the export carries the
audit slice up to the signed head that covers that event. So changing one byte anywhere in the
export breaks a section hash, a block hash, a sample hash or a chain link, and
scripts/verify_record.py (standard library only) says which.

Everything streams: rows are read with `.iterator()` and written as they come, so memory stays
flat however many deliveries a campaign has.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from django.db import transaction
from django.db.models import Max, Min, Q

from accounts.models import User
from audit.anchor import anchor_chain, latest_signed_head
from audit.chain import record_audit
from audit.models import AuditEvent

from .digests import digest_content, sample_sha256
from .models import Approval, Campaign, Delivery, ProviderEvent
from .retention import PURGED

FORMAT = "countersign.campaign-record.v1"
BLOCK_ROWS = 1000
RECORD_FILE = "record.json"
DELIVERIES_FILE = "deliveries.csv"
DELIVERY_COLUMNS = (
    "delivery_id",
    "user_id",
    "address",
    "recipient_data",
    "status",
    "attempts",
    "message_id",
    "provider_message_id",
    "sent_at",
    "updated_at",
    "last_error",
)
# What the record lists as operator actions on a send (besides the emergency stop).
OPERATOR_ACTIONS = (
    "campaign.paused",
    "campaign.paused_by_guard",
    "campaign.resumed",
    "campaign.reopened",
    "campaign.cancelled",
)
CAMPAIGN_OBJECT = Campaign._meta.label_lower
EXPORTED = "campaign.record_exported"


def canonical(value: Any) -> bytes:
    """The one serialization that is hashed: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None


def _person(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.pk, "username": user.username, "email": user.email}


def audit_event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        # Exactly the string the chain hash covers (UTC, microseconds).
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor": event.actor_label,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "data": event.data,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def delivery_row(delivery: Delivery) -> list[str]:
    """One CSV row, every field already a string so that what is hashed is what is written."""
    return [
        str(delivery.pk),
        str(delivery.user_id),
        delivery.address,
        canonical(delivery.recipient_data).decode("utf-8"),
        delivery.status,
        str(delivery.attempts),
        delivery.message_id,
        delivery.provider_message_id,
        _time(delivery.sent_at) or "",
        _time(delivery.updated_at) or "",
        delivery.last_error,
    ]


def row_hash_input(row: list[str]) -> bytes:
    return canonical(row) + b"\n"


@dataclass
class RecordSummary:
    deliveries: int
    provider_events: int
    audit_events: int
    export_event_seq: int
    signed_head_seq: int | None


# --- The parts -------------------------------------------------------------------------------


def _campaign_section(campaign: Campaign) -> dict[str, Any]:
    sent = Delivery.objects.filter(campaign=campaign).aggregate(
        first=Min("sent_at"), last=Max("sent_at")
    )
    history = AuditEvent.objects.filter(
        object_type=CAMPAIGN_OBJECT,
        object_id=str(campaign.pk),
        action__in=["campaign.edited", "campaign.submitted"],
    ).order_by("seq")
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "category": campaign.category,
        "created_at": _time(campaign.created_at),
        "author": _person(campaign.author),
        "contributors": [_person(u) for u in campaign.contributors.order_by("pk")],
        "edits_and_submissions": [
            {"seq": e.seq, "action": e.action, "actor": e.actor_label, "at": _time(e.created_at)}
            for e in history
        ],
        "submitted_by": _person(campaign.submitted_by),
        "submitted_at": _time(campaign.submitted_at),
        "approved_by": _person(campaign.approved_by),
        "approved_at": _time(campaign.approved_at),
        "sending_started_at": _time(campaign.sending_started_at),
        "completed_at": _time(campaign.completed_at),
        "first_sent_at": _time(sent["first"]),
        "last_sent_at": _time(sent["last"]),
        "recipient_count": campaign.recipient_count,
        "frozen_digest": campaign.frozen_digest,
        "approved_digest": campaign.approved_digest,
        "audience_hash": campaign.audience_hash,
    }


def _approvals_section(campaign: Campaign) -> list[dict[str, Any]]:
    approvals = Approval.objects.filter(campaign=campaign).select_related("reviewer").order_by("pk")
    return [
        {
            "id": a.pk,
            "decision": a.decision,
            "reviewer": _person(a.reviewer),
            "created_at": _time(a.created_at),
            "comment": a.comment,
            "digest": a.digest,
            "recipient_count": a.recipient_count,
            "audience_hash": a.audience_hash,
            "voided_at": _time(a.voided_at),
            "samples": [
                {
                    "delivery_id": s.get("delivery_id"),
                    "label": s.get("label", ""),
                    "address": s.get("address", ""),
                    "sha256": sample_sha256(s.get("eml", "")),
                    "eml": s.get("eml", ""),
                }
                for s in a.samples
            ],
        }
        for a in approvals
    ]


def _event_list(events: Iterable[AuditEvent]) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "action": e.action,
            "actor": e.actor_label,
            "at": _time(e.created_at),
            "data": e.data,
        }
        for e in events
    ]


def _operator_actions(campaign: Campaign) -> list[dict[str, Any]]:
    about_campaign = Q(object_type=CAMPAIGN_OBJECT, object_id=str(campaign.pk))
    mine = (about_campaign & Q(action__in=OPERATOR_ACTIONS)) | Q(
        action__in=["delivery.resend", "delivery.marked_sent"], data__campaign_id=campaign.pk
    )
    # The emergency stop acts on every campaign: list every one since this campaign's first
    # event (a stop after it finished changed nothing for it, but says so by its time).
    span = AuditEvent.objects.filter(about_campaign).aggregate(first=Min("seq"), last=Max("seq"))
    if span["first"] is not None:
        mine |= Q(
            action__in=["sending.halted", "sending.released"],
            seq__gte=span["first"],
        )
    return _event_list(AuditEvent.objects.filter(mine).order_by("seq"))


def _provider_event_dict(event: ProviderEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "provider": event.provider,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "recipient": event.recipient,
        "message_id": event.message_id,
        "delivery_id": event.delivery_id,
        "occurred_at": _time(event.occurred_at),
        "received_at": _time(event.received_at),
        "payload": event.payload,
    }


class _HashingWriter:
    """Writes bytes to a file and feeds the same bytes to the hashers given with them."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, data: bytes, *hashers: Any) -> None:
        self.handle.write(data)
        for hasher in hashers:
            hasher.update(data)


def _write_list(out: _HashingWriter, items: Iterator[Any]) -> tuple[str, int]:
    """Write a JSON list one item per line; return (sha256 of its canonical form, count).

    The canonical form of a list is its items' canonical forms joined by commas, so the hash
    is computed from the same bytes as they are written, with no second pass.
    """
    hasher = hashlib.sha256(b"[")
    out.write(b"[")
    count = 0
    for item in items:
        if count:
            out.write(b",", hasher)
        out.write(b"\n")
        out.write(canonical(item), hasher)
        count += 1
    out.write(b"\n]" if count else b"]")
    hasher.update(b"]")
    return hasher.hexdigest(), count


def _write_deliveries(campaign: Campaign, path: Path) -> dict[str, Any]:
    """Write deliveries.csv; return its summary and the hash of every block of rows."""
    blocks: list[str] = []
    statuses: Counter[str] = Counter()
    rows = 0
    block = hashlib.sha256()
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(DELIVERY_COLUMNS)
        deliveries = Delivery.objects.filter(campaign=campaign).order_by("user_id")
        for delivery in deliveries.iterator(chunk_size=2000):
            row = delivery_row(delivery)
            writer.writerow(row)
            block.update(row_hash_input(row))
            statuses[delivery.status] += 1
            rows += 1
            if rows % BLOCK_ROWS == 0:
                blocks.append(block.hexdigest())
                block = hashlib.sha256()
    if rows % BLOCK_ROWS:
        blocks.append(block.hexdigest())
    purges = AuditEvent.objects.filter(
        object_type=CAMPAIGN_OBJECT, object_id=str(campaign.pk), action=PURGED
    ).order_by("seq")
    return {
        "summary": {
            "file": DELIVERIES_FILE,
            "rows": rows,
            "order": "user_id",
            "columns": list(DELIVERY_COLUMNS),
            "status_counts": dict(sorted(statuses.items())),
            # Rows deleted under the retention policy (campaigns/retention.py), by event.
            "purged": [
                {"seq": e.seq, "at": _time(e.created_at), "deliveries": e.data.get("deliveries")}
                for e in purges
            ],
        },
        "blocks": blocks,
    }


def write_record_zip(campaign: Campaign, *, by: Any, target: IO[bytes]) -> RecordSummary:
    """Write the record as one zip (record.json + deliveries.csv) to `target`, via a temporary
    directory, so neither part is ever held in memory whole."""
    with tempfile.TemporaryDirectory(prefix="countersign-record-") as tmp:
        directory = Path(tmp)
        summary = write_campaign_record(campaign, by=by, directory=directory)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in (RECORD_FILE, DELIVERIES_FILE):
                archive.write(directory / name, arcname=name)
    return summary


def write_campaign_record(campaign: Campaign, *, by: Any, directory: Path) -> RecordSummary:
    """Write record.json and deliveries.csv for `campaign` into `directory`; audit the export.

    `by` is the user who asked (or a label such as "manage.py" for the command line).
    """
    directory.mkdir(parents=True, exist_ok=True)
    campaign = Campaign.objects.select_related(
        "sender", "author", "submitted_by", "approved_by"
    ).get(pk=campaign.pk)
    deliveries = _write_deliveries(campaign, directory / DELIVERIES_FILE)
    body = directory / (RECORD_FILE + ".part")
    sections: dict[str, str] = {}
    with body.open("wb") as handle:
        out = _HashingWriter(handle)
        fixed: dict[str, Any] = {
            "campaign": _campaign_section(campaign),
            "content": digest_content(campaign),
            "approvals": _approvals_section(campaign),
            "test_sends": _event_list(
                AuditEvent.objects.filter(
                    object_type=CAMPAIGN_OBJECT,
                    object_id=str(campaign.pk),
                    action="campaign.test_sent",
                ).order_by("seq")
            ),
            "operator_actions": _operator_actions(campaign),
            "deliveries": deliveries["summary"],
        }
        for index, (name, value) in enumerate(fixed.items()):
            out.write(b'{\n"' if index == 0 else b',\n"')
            out.write(name.encode() + b'":')
            data = canonical(value)
            out.write(data)
            sections[name] = hashlib.sha256(data).hexdigest()
        out.write(b',\n"provider_events":')
        events = ProviderEvent.objects.filter(delivery__campaign=campaign).order_by("pk")
        sections["provider_events"], provider_count = _write_list(
            out, (_provider_event_dict(e) for e in events.iterator(chunk_size=2000))
        )
        out.write(b"\n}")

    first_seq = AuditEvent.objects.filter(
        object_type=CAMPAIGN_OBJECT, object_id=str(campaign.pk)
    ).aggregate(first=Min("seq"))["first"]
    with transaction.atomic():
        seal = record_audit(
            EXPORTED,
            actor=by,
            obj=campaign,
            data={
                "format": FORMAT,
                "sections": sections,
                "deliveries_csv": {
                    "rows": deliveries["summary"]["rows"],
                    "block_rows": BLOCK_ROWS,
                    "blocks": deliveries["blocks"],
                },
            },
        )
    # Sign a head that covers the seal, so the export carries its own proof.
    anchor_chain()
    head = latest_signed_head()
    last_seq = head["seq"] if head is not None and head["seq"] >= seal.seq else seal.seq

    record = directory / RECORD_FILE
    audit_count = 0
    with record.open("wb") as handle, body.open("rb") as part:
        handle.write(b'{\n"format":' + canonical(FORMAT))
        handle.write(b',\n"export_event_seq":' + canonical(seal.seq))
        handle.write(b',\n"sections":')
        while chunk := part.read(65536):
            handle.write(chunk)
        handle.write(b',\n"audit_events":')
        slice_ = AuditEvent.objects.filter(
            seq__gte=first_seq if first_seq is not None else seal.seq, seq__lte=last_seq
        ).order_by("seq")
        _, audit_count = _write_list(
            _HashingWriter(handle),
            (audit_event_dict(e) for e in slice_.iterator(chunk_size=2000)),
        )
        handle.write(b',\n"signed_head":' + canonical(head) + b"\n}\n")
    body.unlink()
    return RecordSummary(
        deliveries=deliveries["summary"]["rows"],
        provider_events=provider_count,
        audit_events=audit_count,
        export_event_seq=seal.seq,
        signed_head_seq=head["seq"] if head is not None else None,
    )
