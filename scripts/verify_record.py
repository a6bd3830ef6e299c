#!/usr/bin/env python3
"""Verify a Countersign compliance record offline. Python 3.11 standard library only.

    python3 verify_record.py campaign-7-record.zip            # or the directory holding
    python3 verify_record.py record-dir/ --key-file anchor.key  # record.json + deliveries.csv

Checks, and names whatever does not hold:

1. The audit events: each event's hash is recomputed from its contents, and each event's
   prev_hash is the hash of the one before it, up to the signed chain head in the record
   (its seq and hash, and the per-event hashes it mirrors). With the anchor key
   (--key-file, or the AUDIT_ANCHOR_KEY environment variable) the head's HMAC signature
   is checked too; without it, that one check is skipped and said so.
2. The seal: the `campaign.record_exported` event (inside the verified chain) holds the
   sha256 of every section of record.json and of every block of deliveries.csv rows.
3. The approval digest, recomputed from the stored content, against the campaign's frozen
   and approved digests and each approval that was not voided.
4. Each stored sample message the reviewer saw: its bytes hashed, against the hash listed
   beside it and the hash the approval's own audit event recorded.
5. The audience hash, recomputed from deliveries.csv (user id, address, frozen values).

Exit status 0 when everything holds, 1 when something does not, 2 when the files cannot be
read at all. The hashing rules here repeat audit/models.py `chain_hash`, audit/anchor.py
`_signature`, campaigns/digests.py and campaigns/record.py; the test suite checks that they agree.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import IO, Any

FORMAT = "countersign.campaign-record.v1"
SIGNING_CONTEXT = b"countersign.audit.anchor.v1\n"
EXPORTED = "campaign.record_exported"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_hash(event: dict[str, Any]) -> str:
    return sha256(
        canonical(
            {
                "prev": event["prev_hash"],
                "seq": event["seq"],
                "at": event["created_at"],
                "actor_id": event["actor_id"],
                "actor": event["actor"],
                "action": event["action"],
                "object_type": event["object_type"],
                "object_id": event["object_id"],
                "data": event["data"],
            }
        )
    )


class Record:
    """record.json and deliveries.csv, from a directory or a zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self._zip = None
        else:
            self._zip = zipfile.ZipFile(path)

    def open(self, name: str) -> IO[bytes]:
        if self._zip is None:
            return (self.path / name).open("rb")
        return self._zip.open(name)


class Verifier:
    def __init__(self, record: Record, key: bytes | None) -> None:
        self.record = record
        self.key = key
        self.problems: list[str] = []
        self.notes: list[str] = []

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def run(self) -> None:
        with self.record.open("record.json") as handle:
            doc = json.load(handle)
        if doc.get("format") != FORMAT:
            self.fail(f"record.json: unknown format {doc.get('format')!r}")
            return
        events = doc.get("audit_events") or []
        chain_ok = self.check_chain(events, doc.get("signed_head"))
        by_seq = {e.get("seq"): e for e in events}
        seal = by_seq.get(doc.get("export_event_seq"))
        if seal is None or seal.get("action") != EXPORTED:
            self.fail(
                "the export's seal (campaign.record_exported event) is not in the audit events"
            )
            seal_data: dict[str, Any] = {}
        else:
            seal_data = seal.get("data") or {}
            if not chain_ok:
                self.notes.append("the seal is inside a chain that does not verify: not trusted")
        sections = doc.get("sections") or {}
        self.check_sections(sections, seal_data.get("sections") or {})
        self.check_digest(sections)
        self.check_samples(sections, by_seq)
        self.check_deliveries(sections, seal_data.get("deliveries_csv") or {})

    # 1. The chain and its signed head.
    def check_chain(self, events: list[dict[str, Any]], head: dict[str, Any] | None) -> bool:
        ok = True
        previous: dict[str, Any] | None = None
        for event in events:
            seq = event.get("seq")
            label = f"audit event #{seq} ({event.get('action')})"
            try:
                computed = event_hash(event)
            except (KeyError, TypeError, AttributeError):
                self.fail(f"{label}: a field is missing or malformed")
                ok = False
                continue
            if computed != event.get("hash"):
                self.fail(f"{label}: its contents do not match its hash (the event was altered)")
                ok = False
            if previous is not None:
                if seq != previous["seq"] + 1:
                    self.fail(f"{label}: follows #{previous['seq']}; an event is missing")
                    ok = False
                elif event.get("prev_hash") != previous.get("hash"):
                    self.fail(f"{label}: its prev_hash is not the hash of #{previous['seq']}")
                    ok = False
            previous = event
        if head is None:
            self.fail("the record carries no signed chain head")
            return False
        by_seq = {e.get("seq"): e for e in events}
        top = by_seq.get(head.get("seq"))
        if top is None:
            self.fail(f"the signed head names event #{head.get('seq')}, which the record lacks")
            ok = False
        elif top.get("hash") != head.get("hash"):
            self.fail(f"audit event #{top['seq']}: its hash is not the one the signed head carries")
            ok = False
        first = head.get("first")
        for offset, link in enumerate(head.get("links") or []):
            mirrored = by_seq.get(first + offset) if isinstance(first, int) else None
            if mirrored is not None and mirrored.get("hash") != link:
                self.fail(
                    f"audit event #{mirrored['seq']}: its hash is not the one the signed head mirrors"
                )
                ok = False
        if self.key is None:
            self.notes.append("no anchor key given: the signed head's signature was not checked")
        else:
            unsigned = {name: value for name, value in head.items() if name != "sig"}
            expected = hmac.new(self.key, SIGNING_CONTEXT + canonical(unsigned), hashlib.sha256)
            if not hmac.compare_digest(expected.hexdigest(), str(head.get("sig"))):
                self.fail("the signed head's signature does not verify with this key")
                ok = False
        return ok

    # 2. Each section against its sealed hash.
    def check_sections(self, sections: dict[str, Any], sealed: dict[str, str]) -> None:
        for name in sorted(set(sections) | set(sealed)):
            if name not in sections:
                self.fail(f"record.json: section {name!r} is missing")
            elif name not in sealed:
                self.fail(f"record.json: section {name!r} was not sealed by the export")
            elif sha256(canonical(sections[name])) != sealed[name]:
                self.fail(f"record.json: section {name!r} differs from what the export sealed")

    # 3. The digest, recomputed from the stored content.
    def check_digest(self, sections: dict[str, Any]) -> None:
        content = sections.get("content")
        campaign = sections.get("campaign") or {}
        if not isinstance(content, dict):
            self.fail("record.json: no content to recompute the digest from")
            return
        digest = sha256(canonical(content))
        for field in ("frozen_digest", "approved_digest"):
            if campaign.get(field) and campaign[field] != digest:
                self.fail(
                    f"the digest recomputed from the content ({digest}) is not the campaign's {field}"
                )
        for approval in sections.get("approvals") or []:
            if approval.get("decision") == "approved" and not approval.get("voided_at"):
                if approval.get("digest") != digest:
                    self.fail(
                        f"approval {approval.get('id')}: approved digest {approval.get('digest')} "
                        f"is not the one recomputed from the content ({digest})"
                    )
        if content.get("audience_hash") != campaign.get("audience_hash"):
            self.fail("the content's audience hash is not the campaign's")

    # 4. Each stored sample.
    def check_samples(self, sections: dict[str, Any], by_seq: dict[Any, dict[str, Any]]) -> None:
        recorded: dict[Any, list[str]] = {}
        for event in by_seq.values():
            if event.get("action") == "campaign.approved":
                data = event.get("data") or {}
                if "sample_sha256" in data:
                    recorded[data.get("approval")] = list(data["sample_sha256"])
        for approval in sections.get("approvals") or []:
            chained = recorded.get(approval.get("id"))
            for index, sample in enumerate(approval.get("samples") or []):
                name = (
                    f"approval {approval.get('id')}, sample {index + 1} "
                    f"({sample.get('label')}, delivery {sample.get('delivery_id')})"
                )
                actual = sha256(str(sample.get("eml", "")).encode("utf-8"))
                if actual != sample.get("sha256"):
                    self.fail(f"{name}: the stored message does not hash to the hash beside it")
                if chained is not None and (index >= len(chained) or chained[index] != actual):
                    self.fail(
                        f"{name}: the stored message is not the one the approval's audit event recorded"
                    )

    # 5. deliveries.csv: sealed blocks and the audience hash.
    def check_deliveries(self, sections: dict[str, Any], sealed: dict[str, Any]) -> None:
        summary = sections.get("deliveries") or {}
        columns = summary.get("columns") or []
        block_rows = int(sealed.get("block_rows") or 1000)
        blocks = list(sealed.get("blocks") or [])
        with self.record.open("deliveries.csv") as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            header = next(reader, None)
            if header != columns:
                self.fail("deliveries.csv: its header is not the columns the record lists")
                return
            index = {name: i for i, name in enumerate(columns)}
            rows = 0
            block = hashlib.sha256()
            block_ids: list[str] = []
            digest = hashlib.sha256(b"countersign.audience.v1\n")

            def close_block() -> None:
                number = (rows - 1) // block_rows
                where = f"rows {number * block_rows + 1}-{rows} (deliveries {block_ids[0]}..{block_ids[-1]})"
                if number >= len(blocks):
                    self.fail(f"deliveries.csv {where}: more rows than the export sealed")
                elif block.hexdigest() != blocks[number]:
                    self.fail(f"deliveries.csv {where}: differ from what the export sealed")

            for row in reader:
                rows += 1
                block.update(canonical(row) + b"\n")
                block_ids.append(row[index["delivery_id"]] if len(row) == len(columns) else "?")
                try:
                    data = json.loads(row[index["recipient_data"]])
                    digest.update(
                        canonical([int(row[index["user_id"]]), row[index["address"]].lower(), data])
                    )
                    digest.update(b"\n")
                except (ValueError, IndexError):
                    self.fail(f"deliveries.csv row {rows}: unreadable user id or values")
                if rows % block_rows == 0:
                    close_block()
                    block = hashlib.sha256()
                    block_ids = []
            if rows % block_rows:
                close_block()
        if rows != summary.get("rows") or rows != sealed.get("rows"):
            self.fail(f"deliveries.csv: {rows} rows, the record says {summary.get('rows')}")
        campaign = sections.get("campaign") or {}
        purged = sum(int(p.get("deliveries") or 0) for p in summary.get("purged") or [])
        if purged:
            self.notes.append(
                f"{purged} deliveries were purged under the retention policy: the audience "
                "hash cannot be recomputed from the rows that remain"
            )
        elif campaign.get("audience_hash") and digest.hexdigest() != campaign["audience_hash"]:
            self.fail(
                "deliveries.csv: the audience hash recomputed from the addresses and values is "
                "not the approved one"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="the downloaded .zip, or a directory")
    parser.add_argument("--key-file", type=Path, help="file holding AUDIT_ANCHOR_KEY")
    args = parser.parse_args(argv)
    key: bytes | None = None
    if args.key_file:
        key = args.key_file.read_bytes().strip()
    elif os.environ.get("AUDIT_ANCHOR_KEY"):
        key = os.environ["AUDIT_ANCHOR_KEY"].encode("utf-8")
    try:
        verifier = Verifier(Record(args.record), key)
        verifier.run()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        print(f"cannot read the record: {exc}", file=sys.stderr)
        return 2
    for note in verifier.notes:
        print(f"note: {note}")
    for problem in verifier.problems:
        print(f"FAIL: {problem}")
    if verifier.problems:
        print(f"{len(verifier.problems)} problem(s): this record does not verify.")
        return 1
    print("OK: the chain links, the seal, the digest, every sample and every delivery row verify.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
