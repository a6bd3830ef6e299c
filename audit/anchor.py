"""The audit chain's anchor outside the database: its head, signed, in an append-only file.

Whoever can write to the database can delete the newest events and rewind the chain head,
or rewrite an event and recompute every later hash, and the chain still checks out against
itself. The anchor is what such a person cannot redo: the chain head is signed with
`AUDIT_ANCHOR_KEY`, a key kept out of the database, and appended to `AUDIT_ANCHOR_PATH`, a
file outside it, after every approval and every `AUDIT_ANCHOR_INTERVAL_SECONDS`.
`verify_audit` checks the chain against every anchor, so a missing tail or a changed event
is named even when every link inside the database holds.

The file is JSON lines, one signed anchor per line, only ever appended to::

    {"at": "2025-06-01T12:00:00.000000+00:00", "first": 40, "hash": "<hash of #42>",
     "links": ["<hash of #40>", "<hash of #41>", "<hash of #42>"], "prev": "<sig of the
     line before, empty on the first>", "seq": 42, "sig": "<hex>", "v": 1}

`seq` and `hash` are the signed head. `links` mirrors the hash of every event since the
previous anchor (from `first` to `seq`), so a rewrite is pinned to the first event that
differs, not only to the anchor it disagrees with. `prev` chains the lines, so a removed or
reordered line shows too. `sig` is HMAC-SHA256 under the key over
b"countersign.audit.anchor.v1\\n" followed by the canonical JSON (sorted keys, no spaces,
UTF-8) of every other field: an auditor can check a line with the key and nothing else.

What an anchor cannot do: events written after the newest anchor rest on the chain alone
until the next one (at most one interval; approvals are anchored at once), and someone who
holds the key and the file as well as the database can rewrite all three. Keep a copy (the
compliance export embeds `latest_signed_head()`) where that person cannot reach it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from .models import GENESIS_HASH, AuditChainHead, AuditEvent

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIGNING_CONTEXT = b"countersign.audit.anchor.v1\n"
# A catch-up after a long gap (or the first anchor of an old chain) is cut into lines of
# this many links, so no line grows without bound.
LINKS_PER_ANCHOR = 1000
# Decisions are anchored as soon as they commit rather than at the next interval. Plain
# action names, so the audit app needs to know nothing of the apps that record them.
ANCHORED_ACTIONS = frozenset({"campaign.approved"})
# verify_audit names this many unreadable lines, then counts the rest.
_BAD_LINES_SHOWN = 5


class AnchorRefused(Exception):
    """The database chain does not continue the anchored one: signing it would bless a forgery."""


class _BadLine(ValueError):
    """A line of the anchor log that is not a signed anchor; the message says why."""


@dataclass(frozen=True)
class Anchor:
    """One signed line of the anchor log."""

    seq: int
    hash: str
    at: str
    first: int
    links: tuple[str, ...]
    prev: str
    sig: str
    # Where it was read: its 1-based line number, or 0 when read from the end of the file.
    line: int = 0

    def fields(self) -> dict[str, Any]:
        """The line as written (what the compliance export embeds)."""
        return {
            "v": FORMAT_VERSION,
            "at": self.at,
            "seq": self.seq,
            "hash": self.hash,
            "first": self.first,
            "links": list(self.links),
            "prev": self.prev,
            "sig": self.sig,
        }

    def link_pairs(self) -> Iterator[tuple[int, str]]:
        """(seq, hash) of every event this anchor mirrors, oldest first."""
        return zip(count(self.first), self.links, strict=False)


@dataclass
class AnchorLog:
    """What `read_anchor_log` found: the lines that verify, and what is wrong with the rest."""

    path: Path
    exists: bool
    anchors: list[Anchor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def newest(self) -> Anchor | None:
        return max(self.anchors, key=lambda anchor: anchor.seq, default=None)


def anchor_key() -> bytes:
    key = str(getattr(settings, "AUDIT_ANCHOR_KEY", "") or "")
    if not key:
        raise ImproperlyConfigured(
            "AUDIT_ANCHOR_KEY (or AUDIT_ANCHOR_KEY_FILE) is not set: the audit chain can be "
            "neither anchored nor checked against its anchors."
        )
    return key.encode("utf-8")


def anchor_path() -> Path:
    return Path(settings.AUDIT_ANCHOR_PATH)


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _signature(fields: dict[str, Any], key: bytes) -> str:
    unsigned = {name: value for name, value in fields.items() if name != "sig"}
    return hmac.new(key, SIGNING_CONTEXT + _canonical(unsigned), hashlib.sha256).hexdigest()


def _is_hash(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_anchor(raw: bytes | str, key: bytes, line: int = 0) -> Anchor:
    """One line of the log as an Anchor; raises _BadLine saying why it is not one."""
    try:
        fields = json.loads(raw)
    except ValueError:
        raise _BadLine("it is not JSON (a torn or edited line)") from None
    if not isinstance(fields, dict) or fields.get("v") != FORMAT_VERSION:
        raise _BadLine("it is not a signed anchor of this format")
    sig = fields.get("sig")
    if not isinstance(sig, str) or not hmac.compare_digest(sig, _signature(fields, key)):
        raise _BadLine(
            "its signature does not match: the line was forged or edited, or "
            "AUDIT_ANCHOR_KEY is not the key it was signed with"
        )
    # Signed with our key, so written by anchor_chain; the shape is still checked, so that
    # nothing malformed can pass as an anchor.
    seq, first, links, prev, at = (fields.get(k) for k in ("seq", "first", "links", "prev", "at"))
    if not (
        isinstance(seq, int)
        and isinstance(first, int)
        and _is_seq(seq)
        and _is_seq(first)
        and isinstance(links, list)
        and links
        and all(_is_hash(link) for link in links)
        and first + len(links) - 1 == seq
        and links[-1] == fields.get("hash")
        and isinstance(prev, str)
        and isinstance(at, str)
    ):
        raise _BadLine("its fields do not form an anchor")
    return Anchor(
        seq=seq,
        hash=links[-1],
        at=at,
        first=first,
        links=tuple(links),
        prev=prev,
        sig=sig,
        line=line,
    )


# --- reading ---------------------------------------------------------------------------------


def _lines_from_end(handle: IO[bytes], block: int = 65536) -> Iterator[bytes]:
    """The file's non-blank lines, newest first, reading only as far back as asked."""
    handle.seek(0, os.SEEK_END)
    position = handle.tell()
    pending = b""
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        pending = handle.read(step) + pending
        lines = pending.split(b"\n")
        # The first piece may be the end of a line that starts in an earlier block.
        pending = lines.pop(0)
        for line in reversed(lines):
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _newest_in(handle: IO[bytes], key: bytes) -> Anchor | None:
    for raw in _lines_from_end(handle):
        try:
            return parse_anchor(raw, key)
        except _BadLine:
            # A torn or tampered line is verify_audit's to report; the log goes on from
            # the newest line that verifies.
            continue
    return None


def latest_signed_head(path: Path | None = None) -> dict[str, Any] | None:
    """The newest anchor that verifies, as the JSON line it was written as; None if none.

    For the compliance export, which embeds it, so each export carries a copy of the
    signed head away from both the database and this file. Call `anchor_chain()` first
    for a head that includes the events up to now. `verify_audit --anchor-file` checks
    the chain against a file of such lines.
    """
    path = path or anchor_path()
    key = anchor_key()
    if not path.exists():
        return None
    with path.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        newest = _newest_in(handle, key)
    return newest.fields() if newest is not None else None


def read_anchor_log(path: Path | None = None) -> AnchorLog:
    """Every line of the log: the anchors that verify and follow each other, and the problems.

    A line that does not verify is reported and left out. Two verifying lines with no bad
    line between them must chain (`prev` is the other's signature, `first` follows its
    `seq`); otherwise a line was removed, reordered or inserted.
    """
    path = path or anchor_path()
    found = AnchorLog(path=path, exists=path.exists())
    if not found.exists:
        return found
    key = anchor_key()
    bad_lines: list[str] = []
    previous: Anchor | None = None
    adjacent = True
    with path.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                anchor = parse_anchor(raw, key, number)
            except _BadLine as why:
                bad_lines.append(f"line {number}: {why}")
                adjacent = False
                continue
            expected_prev, expected_first = (
                (previous.sig, previous.seq + 1) if previous else ("", 1)
            )
            if adjacent and (anchor.prev, anchor.first) != (expected_prev, expected_first):
                after = f"line {previous.line}" if previous else "the start of the log"
                found.problems.append(
                    f"Anchor log {path}: line {number} does not follow {after} "
                    "(a line was removed, reordered or inserted)."
                )
            if previous is None or anchor.seq > previous.seq:
                found.anchors.append(anchor)
                previous = anchor
            adjacent = True
    if bad_lines:
        shown = "; ".join(bad_lines[:_BAD_LINES_SHOWN])
        more = len(bad_lines) - _BAD_LINES_SHOWN
        found.problems.insert(
            0,
            f"Anchor log {path}: {len(bad_lines)} line(s) do not verify: {shown}"
            + (f"; and {more} more." if more > 0 else "."),
        )
    return found


def first_difference_from_anchors(anchors: Sequence[Anchor], chunk_size: int = 2000) -> str | None:
    """The first place where the database chain leaves the anchored one, or None.

    Walks the events and the anchored links side by side, oldest first. An event the
    anchors recorded that the database no longer has is a truncation (or a hole); a stored
    hash that differs from the anchored one is a rewrite. Where the anchors also recorded
    the event before it, and it agreed, that event is exactly the first that differs;
    otherwise the window between the last agreeing link and this one is named.
    """
    if not anchors:
        return None
    newest = max(anchors, key=lambda anchor: anchor.seq)
    events = (
        AuditEvent.objects.order_by("seq")
        .values_list("seq", "hash")
        .iterator(chunk_size=chunk_size)
    )
    current = next(events, None)
    last_in_database = 0
    agreed = 0
    anchored_up_to = 0
    for anchor in anchors:
        for seq, anchored_hash in anchor.link_pairs():
            if seq <= anchored_up_to:
                continue
            anchored_up_to = seq
            while current is not None and current[0] < seq:
                last_in_database = current[0]
                current = next(events, None)
            if current is None:
                return (
                    f"Audit chain truncated: event #{last_in_database + 1} is missing "
                    f"(the signed anchor of {newest.at} covers events up to #{newest.seq})."
                )
            if current[0] != seq:
                return (
                    f"Audit chain: event #{seq} is missing "
                    f"(it was anchored in the signed anchor of {anchor.at})."
                )
            if current[1] != anchored_hash:
                if agreed == seq - 1:
                    return (
                        f"Audit chain rewritten: event #{seq} differs from the anchored chain "
                        f"(signed {anchor.at})."
                    )
                return (
                    f"Audit chain rewritten: an event between #{agreed + 1} and #{seq} differs "
                    f"from the anchored chain (signed {anchor.at}; the anchors record no link "
                    "in between)."
                )
            agreed = seq
    return None


# --- writing ---------------------------------------------------------------------------------


def _new_anchor_lines(newest: Anchor | None, key: bytes) -> Iterator[bytes]:
    """Signed lines for the events after `newest`; AnchorRefused where the chain does not hold.

    Only a chain that continues the anchored one, link by link, is signed: after a
    truncation or a rewrite the periodic job must not bless the forgery.
    """
    head = AuditChainHead.objects.filter(pk=1).first()
    head_seq = head.seq if head is not None else 0
    anchored_seq, anchored_hash = (newest.seq, newest.hash) if newest else (0, GENESIS_HASH)
    if head_seq < anchored_seq:
        raise AnchorRefused(
            f"the chain head is #{head_seq} but event #{anchored_seq} was anchored: "
            "the chain was truncated"
        )
    if newest is not None:
        stored = AuditEvent.objects.filter(seq=anchored_seq).values_list("hash", flat=True).first()
        if stored != anchored_hash:
            raise AnchorRefused(f"event #{anchored_seq} no longer matches its anchor")
    prev_sig = newest.sig if newest else ""
    previous_hash = anchored_hash
    expected = anchored_seq + 1
    links: list[str] = []
    events = AuditEvent.objects.filter(seq__gt=anchored_seq, seq__lte=head_seq).order_by("seq")
    for event in events.iterator(chunk_size=LINKS_PER_ANCHOR):
        if event.seq != expected:
            raise AnchorRefused(f"event #{expected} is missing")
        if event.prev_hash != previous_hash or event.compute_hash() != event.hash:
            raise AnchorRefused(f"event #{expected} does not hold in the chain")
        links.append(event.hash)
        previous_hash = event.hash
        expected += 1
        if len(links) == LINKS_PER_ANCHOR:
            line, prev_sig = _signed_line(links, event.seq, prev_sig, key)
            yield line
            links = []
    if expected - 1 != head_seq:
        raise AnchorRefused(f"event #{expected} is missing")
    if links:
        line, _ = _signed_line(links, expected - 1, prev_sig, key)
        yield line


def _signed_line(links: list[str], seq: int, prev_sig: str, key: bytes) -> tuple[bytes, str]:
    fields: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "at": timezone.now().isoformat(timespec="microseconds"),
        "seq": seq,
        "hash": links[-1],
        "first": seq - len(links) + 1,
        "links": links,
        "prev": prev_sig,
    }
    fields["sig"] = _signature(fields, key)
    return _canonical(fields) + b"\n", fields["sig"]


def anchor_chain(path: Path | None = None) -> int:
    """Append signed anchors for every event since the newest one; return the lines written.

    Idempotent: with nothing new it writes nothing. Raises AnchorRefused (after writing
    the lines for the events that do hold) when the database no longer continues the
    anchored chain.
    """
    key = anchor_key()
    path = path or anchor_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    written = 0
    # Append mode: every write lands at the end, whatever was read before it.
    with path.open("a+b") as handle:
        # One writer at a time across processes (web and workers share the file), because
        # each line chains to the one before it. Closing the file releases the lock.
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        newest = _newest_in(handle, key)
        try:
            for line in _new_anchor_lines(newest, key):
                if written == 0 and not _ends_with_newline(handle):
                    # A torn last line (a crash mid-write) stays reported; ours starts clean.
                    line = b"\n" + line
                handle.write(line)
                written += 1
        finally:
            if written:
                handle.flush()
                os.fsync(handle.fileno())
    if created:
        # The new file's name must survive a crash as well as its contents.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return written


def _ends_with_newline(handle: IO[bytes]) -> bool:
    handle.seek(0, os.SEEK_END)
    if handle.tell() == 0:
        return True
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) == b"\n"


def _anchor_quietly() -> None:
    try:
        anchor_chain()
    except Exception:
        # The decision has committed and must stand. The periodic task anchors whatever
        # this missed, and is where a lasting failure (or a tampered chain) shows again.
        log.exception("Could not anchor the audit chain after commit; the periodic anchor retries.")


def anchor_after_commit() -> None:
    """Anchor the chain once the current transaction commits, never failing or delaying it."""
    transaction.on_commit(_anchor_quietly)
