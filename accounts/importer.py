"""Streaming import of audience members from CSV, shared by `import_users` and the admin.

The file is read twice, one line at a time: first for per-file problems and repeated
addresses (nothing is written if the file is broken anywhere), then to write in chunks,
each in its own transaction. A 100,000-row file never sits in memory and a crash loses
at most the chunk in flight. Re-running the same file finishes the work: existing people
are found by email (case-insensitively) and updated, never duplicated.

Decisions a caller should know:
- Header names are trimmed and lower-cased (`Email` is `email`); cells are trimmed.
- An empty cell never erases a stored value; a later non-empty value wins, both inside a
  file (duplicates are merged) and over what is already stored.
- The import manages the audience only: a row whose email belongs to a staff account is
  an error and that account is left untouched. Deactivated members stay deactivated.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import secrets
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Lower

from audit.chain import record_audit

from .models import AudienceAttribute, User
from .validators import (
    ACCOUNT_FIELDS,
    BUILDER_FIELDS,
    explain_person_text_error,
    normalize_address,
    single_address_error,
)

DEFAULT_CHUNK_SIZE = 1_000
# Each chunk looks up every address plus two candidate usernames in one query; SQLite
# allows 32,766 parameters per statement, so this keeps a wide margin.
MAX_CHUNK_SIZE = 5_000
MAX_STORED_ERRORS = 1_000

FIXED_COLUMNS = ACCOUNT_FIELDS
# Placeholders every template gets from the recipient or the send; an attribute column
# with one of these names would shadow it.
RESERVED_NAMES = frozenset(ACCOUNT_FIELDS + BUILDER_FIELDS)
ATTRIBUTE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
MAX_ATTRIBUTE_NAME = 64

_LOCALE = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")
# django.contrib.auth's UnicodeUsernameValidator: a username outside it cannot be saved
# from the admin's change form.
_USERNAME = re.compile(r"[\w.@+-]+")
_FIELD_LIMITS = {
    "email": User._meta.get_field("email").max_length,
    "first_name": User._meta.get_field("first_name").max_length,
    "last_name": User._meta.get_field("last_name").max_length,
    "locale": User._meta.get_field("locale").max_length,
}
_USERNAME_MAX = User._meta.get_field("username").max_length or 150


class ImportFileError(Exception):
    """The file as a whole cannot be imported (encoding, structure, header)."""


@dataclass(frozen=True)
class RowError:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    """What an import did (or, for a dry run, would do)."""

    source: str
    dry_run: bool
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    merged_duplicates: int = 0
    error_count: int = 0
    errors: list[RowError] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    chunks: int = 0

    @property
    def errors_not_listed(self) -> int:
        return self.error_count - len(self.errors)

    def add_error(self, line: int, email: str, reason: str) -> None:
        # Count every error, keep only the first ones: a broken 100,000-row file must not
        # turn the report itself into the memory problem.
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(RowError(line, email, reason))

    def summary(self) -> str:
        verb = "would be" if self.dry_run else "were"
        return (
            f"{self.rows} rows read: {self.created} {verb} created, {self.updated} {verb} "
            f"updated, {self.unchanged} unchanged, {self.merged_duplicates} duplicate rows "
            f"merged, {self.error_count} rows with errors."
        )


@dataclass(frozen=True)
class MemberRow:
    """One input record, before validation. `line` is where the record starts."""

    line: int
    email: str
    first_name: str = ""
    last_name: str = ""
    locale: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PendingMember:
    """A validated address with its values merged over every row of it seen so far."""

    line: int
    email: str
    key: str
    first_name: str
    last_name: str
    locale: str
    attributes: dict[str, str]

    @classmethod
    def from_row(cls, row: MemberRow, key: str) -> PendingMember:
        return cls(
            line=row.line,
            email=row.email,
            key=key,
            first_name=row.first_name,
            last_name=row.last_name,
            locale=row.locale,
            attributes={k: v for k, v in row.attributes.items() if v},
        )

    def merge(self, row: MemberRow) -> None:
        for name in ("first_name", "last_name", "locale"):
            value = getattr(row, name)
            if value:
                setattr(self, name, value)
        self.attributes.update({k: v for k, v in row.attributes.items() if v})


@dataclass
class ChunkOutcome:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)


def address_fingerprint(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # never 0: 0 marks an empty slot below


class _FingerprintSet:
    """64-bit address fingerprints in one flat array (open addressing, linear probing).

    A Python set of 100,000 address strings costs about 10 MB; this costs 2 MB at most.
    Two addresses sharing a fingerprint (odds about 1 in 10^9 at 100,000 rows) are both
    treated as possible duplicates, which is only slower, never wrong.
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._used = 0

    def add(self, fingerprint: int) -> bool:
        """Record `fingerprint`; True if it was not there yet."""
        if not self._insert(self._slots, fingerprint):
            return False
        self._used += 1
        if self._used * 2 > len(self._slots):
            bigger = array("Q", bytes(16 * len(self._slots)))
            for value in self._slots:
                if value:
                    self._insert(bigger, value)
            self._slots = bigger
        return True

    @staticmethod
    def _insert(slots: array[int], fingerprint: int) -> bool:
        mask = len(slots) - 1
        index = fingerprint & mask
        while slots[index]:
            if slots[index] == fingerprint:
                return False
            index = (index + 1) & mask
        slots[index] = fingerprint
        return True


def repeated_addresses(rows: Iterable[MemberRow | RowError]) -> set[int]:
    """Fingerprints of the addresses that occur more than once (in any case) in `rows`."""
    seen = _FingerprintSet()
    repeated: set[int] = set()
    for row in rows:
        if isinstance(row, MemberRow) and row.email:
            fingerprint = address_fingerprint(normalize_address(row.email))
            if not seen.add(fingerprint):
                repeated.add(fingerprint)
    return repeated


def unusable_password() -> str:
    """What make_password(None) stores (a "!" prefix and random text), about 100x faster.

    Audience members never log in. Django builds its random part one secrets.choice() at
    a time, which was a fifth of the import's time at 100,000 rows.
    """
    return UNUSABLE_PASSWORD_PREFIX + secrets.token_urlsafe(30)


def member_username(email: str) -> str:
    """The username given to a new audience member (who never logs in)."""
    lowered = email.lower()
    if len(lowered) <= _USERNAME_MAX and _USERNAME.fullmatch(lowered):
        return lowered
    return hashed_member_username(email)


def hashed_member_username(email: str) -> str:
    return "member-" + hashlib.sha256(email.lower().encode("utf-8")).hexdigest()[:24]


def row_error(row: MemberRow) -> str | None:
    """Why this row cannot be imported, or None."""
    if not row.email:
        return "email is empty"
    if len(row.email) > (_FIELD_LIMITS["email"] or 254):
        return f"email is longer than {_FIELD_LIMITS['email']} characters"
    problem = single_address_error(row.email)
    if problem is not None:
        return f"invalid address: {problem}"
    for name in ("first_name", "last_name", "locale"):
        value: str = getattr(row, name)
        limit = _FIELD_LIMITS[name] or 0
        if len(value) > limit:
            return f"{name} is longer than {limit} characters"
        why = explain_person_text_error(value)
        if why is not None:
            return f"{name} {why}"
    if row.locale and not _LOCALE.fullmatch(row.locale):
        return f"locale {row.locale!r} is not a language code like en, de or pt-BR"
    for name, value in row.attributes.items():
        why = explain_person_text_error(value)
        if why is not None:
            return f"{name} {why}"
    return None


def check_attribute_name(name: str) -> str | None:
    """Why `name` cannot be an attribute column, or None."""
    if not name:
        return "has no name"
    if len(name) > MAX_ATTRIBUTE_NAME:
        return f"is longer than {MAX_ATTRIBUTE_NAME} characters"
    if not ATTRIBUTE_NAME.fullmatch(name):
        return "must be lower-case letters, digits and _ and not start with a digit"
    if name in RESERVED_NAMES:
        return "is a reserved placeholder name"
    return None


# --- CSV reading -------------------------------------------------------------------------


def _utf8_lines(binary: BinaryIO) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported with its line and position."""
    offset = 0
    for number, raw in enumerate(binary, start=1):
        data = (
            raw[len(codecs.BOM_UTF8) :] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw
        )
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as exc:
            position = offset + (len(raw) - len(data)) + exc.start
            raise ImportFileError(
                f"The file is not UTF-8: line {number}, byte {position + 1} of the file "
                f"(0x{data[exc.start]:02x}) cannot be decoded. Save it as “CSV UTF-8”."
            ) from None
        offset += len(raw)


def _records(binary: BinaryIO) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) of each non-blank CSV record."""
    reader = csv.reader(_utf8_lines(binary), strict=True)
    end_of_previous = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(
                f"This is not a readable CSV file: {exc} (line {reader.line_num})."
            ) from None
        start = end_of_previous + 1
        end_of_previous = reader.line_num
        if any(cell.strip() for cell in cells):
            yield start, cells


@dataclass(frozen=True)
class _Columns:
    names: list[str]
    attributes: list[str]


def _parse_header(cells: list[str]) -> _Columns:
    names = [cell.strip().lower() for cell in cells]
    if "email" not in names:
        hint = ""
        if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
            hint = " The header looks separated by ';' or tabs: save the file with commas."
        found = ", ".join(repr(n) for n in names[:10])
        raise ImportFileError(f"The header has no “email” column (found: {found}).{hint}")
    problems = []
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if name in seen:
            problems.append(f"column {position} {name!r} appears twice")
        seen.add(name)
        if name in FIXED_COLUMNS:
            continue
        problem = check_attribute_name(name)
        if problem:
            problems.append(f"column {position} {name!r} {problem}")
    if problems:
        raise ImportFileError("Bad header: " + "; ".join(problems) + ".")
    return _Columns(names=names, attributes=[n for n in names if n not in FIXED_COLUMNS])


def read_header(path: Path) -> _Columns:
    """The file's columns; ImportFileError if it is empty or the header is unusable."""
    with path.open("rb") as binary:
        first = next(_records(binary), None)
    if first is None:
        raise ImportFileError("The file is empty.")
    return _parse_header(first[1])


def csv_rows(path: Path) -> Iterator[MemberRow | RowError]:
    """Each data record of the file as a row (or a row error), read lazily."""
    with path.open("rb") as binary:
        records = _records(binary)
        first = next(records, None)
        if first is None:
            raise ImportFileError("The file is empty.")
        columns = _parse_header(first[1])
        width = len(columns.names)
        email_index = columns.names.index("email")
        for line, cells in records:
            if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                email = cells[email_index].strip()
                yield RowError(line, email, f"has {len(cells)} cells, the header has {width}")
                continue
            values = dict(zip(columns.names, (cell.strip() for cell in cells), strict=False))
            yield MemberRow(
                line=line,
                email=values.get("email", ""),
                first_name=values.get("first_name", ""),
                last_name=values.get("last_name", ""),
                locale=values.get("locale", ""),
                attributes={name: values[name] for name in columns.attributes if values.get(name)},
            )


# --- Importing ------------------------------------------------------------------------------

RowSource = Callable[[], Iterable[MemberRow | RowError]]


def import_users_csv(
    path: Path | str,
    *,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    actor: User | None = None,
    source: str = "",
) -> ImportReport:
    """Import (or with `dry_run`, only validate and count) audience members from a CSV file.

    Raises ImportFileError for a per-file problem (before anything is written); row
    problems go into the report.
    """
    path = Path(path)
    columns = read_header(path)
    return import_members(
        lambda: csv_rows(path),
        attribute_names=columns.attributes,
        dry_run=dry_run,
        chunk_size=chunk_size,
        actor=actor,
        source=source or path.name,
    )


def import_members(
    read_rows: RowSource,
    *,
    attribute_names: Sequence[str] = (),
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    actor: User | None = None,
    source: str = "",
) -> ImportReport:
    """Validate, merge and write rows in chunks: the engine behind the CSV import and the seed.

    `read_rows` is called twice and must give the same rows both times. The first pass
    reads everything before anything is written, so a per-file problem found at the end
    (a bad byte on line 60,000) leaves nothing half-imported, and it notes which
    addresses repeat. The second pass writes chunk by chunk. Repeated addresses are held
    back, merged, and written once at the end with their final values: writing each
    occurrence in its own chunk would flip a value back and forth and make a re-run of
    the same file look like a change. Memory: one chunk plus the repeated addresses.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    repeated = repeated_addresses(read_rows())

    report = ImportReport(source=source, dry_run=dry_run, attributes=sorted(attribute_names))
    if not dry_run and attribute_names:
        AudienceAttribute.objects.bulk_create(
            [AudienceAttribute(name=name) for name in sorted(attribute_names)],
            ignore_conflicts=True,
        )
    pending: dict[str, PendingMember] = {}
    held_back: dict[str, PendingMember] = {}

    def write(members: list[PendingMember]) -> None:
        outcome = import_chunk(members, dry_run=dry_run, actor=actor, source=source)
        report.created += outcome.created
        report.updated += outcome.updated
        report.unchanged += outcome.unchanged
        for error in outcome.errors:
            report.add_error(error.line, error.email, error.reason)
        report.chunks += 1

    for row in read_rows():
        report.rows += 1
        if isinstance(row, RowError):
            report.add_error(row.line, row.email, row.reason)
            continue
        problem = row_error(row)
        if problem is not None:
            report.add_error(row.line, row.email, problem)
            continue
        key = normalize_address(row.email)
        target = held_back if address_fingerprint(key) in repeated else pending
        if key in target:
            target[key].merge(row)
            report.merged_duplicates += 1
        else:
            target[key] = PendingMember.from_row(row, key)
        if len(pending) >= chunk_size:
            write(list(pending.values()))
            pending.clear()
    if pending:
        write(list(pending.values()))
    members = list(held_back.values())
    for start in range(0, len(members), chunk_size):
        write(members[start : start + chunk_size])
    return report


_UPDATE_FIELDS = ["first_name", "last_name", "locale", "attributes"]


def import_chunk(
    members: Sequence[PendingMember],
    *,
    dry_run: bool,
    actor: User | None = None,
    source: str = "",
) -> ChunkOutcome:
    """Create or update one chunk of members in one transaction (nothing, for a dry run)."""
    if dry_run:
        return _plan_chunk(members)[0]
    lines = [m.line for m in members]
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                outcome, to_create, to_update = _plan_chunk(members)
                if to_create:
                    User.objects.bulk_create(to_create)
                if to_update:
                    User.objects.bulk_update(to_update, _UPDATE_FIELDS)
                if to_create or to_update:
                    record_audit(
                        "users.imported",
                        actor=actor,
                        data={
                            "source": source,
                            "lines": [min(lines), max(lines)],
                            "created": len(to_create),
                            "updated": len(to_update),
                        },
                    )
            return outcome
        except IntegrityError:
            # Another import (a double-clicked Confirm) created some of these addresses
            # between our lookup and our insert. The chunk rolled back whole; plan again
            # and the rows it created are found and updated instead.
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _plan_chunk(members: Sequence[PendingMember]) -> tuple[ChunkOutcome, list[User], list[User]]:
    outcome = ChunkOutcome()
    keys = [m.key for m in members]
    candidate_usernames = [member_username(m.email) for m in members]
    candidate_usernames += [hashed_member_username(m.email) for m in members]
    found = list(
        User.objects.annotate(email_key=Lower("email"))
        .filter(Q(email_key__in=keys) | Q(username__in=candidate_usernames))
        .only("id", "username", "email", *_UPDATE_FIELDS, "is_staff", "is_superuser")
    )
    by_email = {normalize_address(user.email): user for user in found}
    taken_usernames = {user.username for user in found}

    to_create: list[User] = []
    to_update: list[User] = []
    for member in members:
        user = by_email.get(member.key)
        if user is None:
            username = next(
                (
                    name
                    for name in (
                        member_username(member.email),
                        hashed_member_username(member.email),
                    )
                    if name not in taken_usernames
                ),
                None,
            )
            if username is None:
                outcome.errors.append(
                    RowError(member.line, member.email, "its username is taken by another account")
                )
                continue
            taken_usernames.add(username)
            to_create.append(
                User(
                    username=username,
                    # Like create_user: the domain is case-insensitive, the local part is kept.
                    email=User.objects.normalize_email(member.email),
                    password=unusable_password(),
                    is_staff=False,
                    first_name=member.first_name,
                    last_name=member.last_name,
                    locale=member.locale,
                    attributes=dict(member.attributes),
                )
            )
            outcome.created += 1
            continue
        if user.is_staff or user.is_superuser:
            outcome.errors.append(
                RowError(
                    member.line,
                    member.email,
                    "belongs to a staff account; the import manages audience members only",
                )
            )
            continue
        changed = False
        for name in ("first_name", "last_name", "locale"):
            value = getattr(member, name)
            if value and getattr(user, name) != value:
                setattr(user, name, value)
                changed = True
        stored = user.attributes if isinstance(user.attributes, dict) else {}
        merged = {**stored, **member.attributes}
        if merged != stored:
            user.attributes = merged
            changed = True
        if changed:
            to_update.append(user)
        if changed:
            outcome.updated += 1
        else:
            outcome.unchanged += 1
    return outcome, to_create, to_update
