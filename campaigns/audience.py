"""The audience: who a campaign reaches, frozen into the delivery ledger at submission.

Address lists uploaded by staff, the filters over active audience members, the live
count for the compose screen, and the freeze itself: one pending `Delivery` per
recipient, with the values their templates will see.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import CharField, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Lower
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address, single_address_error

from .digests import AUDIENCE_DATA_SQL, audience_hash
from .models import Campaign, Delivery
from .suppressions import suppressed_addresses, suppressed_queryset

logger = logging.getLogger(__name__)

MATERIALIZE_CHUNK = 2000


def parse_address_list(text: str) -> tuple[list[str], list[str]]:
    """Parse an uploaded address list: one address per line, blank lines and #comments ignored.

    Returns (normalized addresses, errors); each error names its line.
    """
    addresses: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = single_address_error(line)
        if problem:
            errors.append(f"line {number}: {line!r} {problem}")
        else:
            addresses.append(normalize_address(line))
    return addresses, errors


def audience_queryset(campaign: Campaign) -> QuerySet[User]:
    """Active audience members matching the campaign's filters (not the uploaded list)."""
    qs = User.objects.audience()
    if campaign.audience_locale:
        qs = qs.filter(locale=campaign.audience_locale)
    if campaign.audience_joined_after:
        qs = qs.filter(date_joined__gte=campaign.audience_joined_after)
    if campaign.audience_joined_before:
        qs = qs.filter(date_joined__lt=campaign.audience_joined_before)
    if campaign.audience_attribute_name:
        # KeyTextTransform takes the key literally: a name like "contains" or "a__b" cannot
        # turn into a lookup or a path.
        qs = qs.annotate(
            _attribute=Cast(
                KeyTextTransform(campaign.audience_attribute_name, "attributes"), CharField()
            )
        ).filter(_attribute=campaign.audience_attribute_value)
    return qs.order_by("id")


@dataclass
class AudienceSummary:
    recipients: int = 0
    suppressed: int = 0
    invalid: int = 0
    unmatched_list_addresses: int = 0


def iter_audience(
    campaign: Campaign, summary: AudienceSummary | None = None
) -> Iterator[Mapping[str, Any]]:
    """Yield the recipients of `campaign` in user-id order, as value dicts.

    Suppressed addresses and addresses the validator refuses are left out and counted.
    """
    summary = summary if summary is not None else AudienceSummary()
    wanted: set[str] | None = None
    if campaign.audience_addresses.strip():
        wanted = set(parse_address_list(campaign.audience_addresses)[0])
    suppressed = suppressed_addresses(campaign.category)
    matched: set[str] = set()
    rows = audience_queryset(campaign).values(
        "id", "email", "first_name", "last_name", "locale", "attributes"
    )
    for row in rows.iterator(chunk_size=MATERIALIZE_CHUNK):
        address = normalize_address(row["email"])
        if wanted is not None:
            if address not in wanted:
                continue
            matched.add(address)
        if single_address_error(row["email"]):
            summary.invalid += 1
            continue
        if address in suppressed:
            summary.suppressed += 1
            continue
        summary.recipients += 1
        yield row
    if wanted is not None:
        summary.unmatched_list_addresses = len(wanted - matched)


def count_audience(campaign: Campaign) -> AudienceSummary:
    """The live count for the compose screen. Without an uploaded list it is two COUNT
    queries (addresses were validated when they were imported); with one, a scan."""
    summary = AudienceSummary()
    if campaign.audience_addresses.strip():
        for _ in iter_audience(campaign, summary):
            pass
        return summary
    qs = audience_queryset(campaign)
    total = qs.count()
    summary.suppressed = (
        qs.annotate(_address=Lower("email"))
        .filter(_address__in=suppressed_queryset(campaign.category).values("address"))
        .count()
    )
    summary.recipients = total - summary.suppressed
    return summary


def member_from_row(row: Mapping[str, Any]) -> User:
    """An `iter_audience` row as the (unsaved) account whose values submission freezes."""
    return User(
        pk=row["id"],
        email=row["email"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        attributes=row["attributes"] or {},
    )


def recipient_data_for_user(user: User) -> dict[str, str]:
    """The placeholder values of one person, as frozen into Delivery.recipient_data."""
    data: dict[str, str] = {}
    attributes = user.attributes if isinstance(user.attributes, dict) else {}
    for key, value in attributes.items():
        if isinstance(key, str) and isinstance(value, str):
            data[key] = value
    # The account fields win over an imported attribute of the same name.
    data.update(
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email,
        locale=user.locale,
    )
    return data


def freeze_audience(campaign: Campaign) -> tuple[int, str, AudienceSummary]:
    """Freeze the audience into pending Delivery rows; return (count, audience hash, summary).

    On PostgreSQL, without an uploaded address list, one INSERT ... SELECT writes every
    row inside the database (`_insert_select`): addresses were validated when they were
    imported, and the ledger's check constraint refuses any row that is not one bare
    address, so they are not validated again row by row in Python. Should the
    constraint refuse one, the statement is undone and the row-by-row path below skips
    and counts it instead. The audience hash is then read back in user-id order, each
    row's data already in canonical JSON (`_hash_in_database`).
    """
    if connection.vendor == "postgresql" and not campaign.audience_addresses.strip():
        try:
            with transaction.atomic():
                summary = _insert_select(campaign)
        except IntegrityError:
            logger.warning("campaign %s: an address failed the ledger's check", campaign.pk)
        else:
            return summary.recipients, _hash_in_database(campaign), summary
    return _freeze_row_by_row(campaign)


def _hash_in_database(campaign: Campaign) -> str:
    """PostgreSQL: the audience hash of the frozen rows, their data's canonical JSON made
    by the database (`AUDIENCE_DATA_SQL`), streamed in user-id order.

    Streamed with COPY ... TO STDOUT rather than a server-side cursor: the database goes
    on making rows while this process hashes the ones it has (a cursor makes each batch
    only when asked), so the two overlap on two cores. Rows still arrive a block at a
    time and are never all in memory.
    """
    quote = connection.ops.quote_name
    user_id, address, data = quote("user_id"), quote("address"), quote("recipient_data")
    # The rows are put in order first (OFFSET 0 keeps that a step of its own) and each
    # one's JSON is made as it leaves: made before the sort, every row would be ready
    # only once all were, and nothing would overlap.
    sql = (
        f"COPY (SELECT d.{user_id}, d.{address}, {AUDIENCE_DATA_SQL} FROM ("
        f"SELECT {user_id}, {address}, {data} FROM {quote(Delivery._meta.db_table)} "
        f"WHERE {quote('campaign_id')} = %s AND {user_id} IS NOT NULL "
        f"ORDER BY {user_id} OFFSET 0) AS d ORDER BY d.{user_id}) TO STDOUT"
    )

    def rows() -> Iterator[tuple[int, str, str]]:
        with connection.cursor() as cursor, cursor.cursor.copy(sql, [campaign.pk]) as copy:
            copy.set_types(["int8", "text", "text"])
            yield from copy.rows()

    return audience_hash(rows())


def _insert_select(campaign: Campaign) -> AudienceSummary:
    """PostgreSQL: every recipient's Delivery row in one INSERT ... SELECT.

    The rows are those `iter_audience` yields (the same filters, minus the suppressed),
    with the recipient data `recipient_data_for_user` makes: the string attributes, then
    the account fields over them.
    """
    audience = audience_queryset(campaign).order_by()
    suppressed = suppressed_queryset(campaign.category).values("address")
    selected, params = (
        audience.annotate(_address=Lower("email"))
        .exclude(_address__in=suppressed)
        .values("id", "email", "first_name", "last_name", "locale", "attributes")
        .query.sql_with_params()
    )
    meta = Delivery._meta
    quote = connection.ops.quote_name
    column_of = {field.attname: field.column for field in meta.concrete_fields}
    columns = [
        "campaign_id",
        "user_id",
        "address",
        "recipient_data",
        "status",
        "attempts",
        "last_error",
        "message_id",
        "provider_message_id",
        "created_at",
        "updated_at",
    ]
    now = timezone.now()
    sql = f"""
        INSERT INTO {quote(meta.db_table)} ({", ".join(quote(column_of[c]) for c in columns)})
        SELECT %s, a.id, a.email,
            COALESCE(
                CASE WHEN jsonb_typeof(a.attributes) <> 'object' THEN NULL
                -- Every value a string (strict: an array is not looked into): kept whole,
                -- without taking the object apart and aggregating it again.
                WHEN NOT jsonb_path_exists(
                    a.attributes, 'strict $.* ? (@.type() != "string")'
                ) THEN a.attributes
                ELSE (
                    SELECT jsonb_object_agg(e.key, e.value)
                    FROM jsonb_each(a.attributes) AS e
                    WHERE jsonb_typeof(e.value) = 'string'
                ) END,
                '{{}}'::jsonb
            ) || jsonb_build_object(
                'first_name', a.first_name, 'last_name', a.last_name,
                'email', a.email, 'locale', a.locale
            ),
            %s, 0, '', '', '', %s, %s
        FROM ({selected}) AS a
        ORDER BY a.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [campaign.pk, Delivery.Status.PENDING, now, now, *params])
        inserted = cursor.rowcount
    summary = count_audience(campaign)
    summary.recipients = inserted
    return summary


def _freeze_row_by_row(campaign: Campaign) -> tuple[int, str, AudienceSummary]:
    """Every database, and uploaded address lists: rows streamed through Python.

    Rows stream in user-id order and are inserted in chunks while the hash is computed,
    so 100,000 recipients never sit in memory at once.
    """
    summary = AudienceSummary()
    buffer: list[tuple[Any, ...]] = []
    insert = _delivery_inserter()

    def flush() -> None:
        insert(buffer)
        buffer.clear()

    def rows() -> Iterator[tuple[int, str, dict[str, str]]]:
        for row in iter_audience(campaign, summary):
            data = recipient_data_for_user(member_from_row(row))
            buffer.append((campaign.pk, row["id"], row["email"], data))
            if len(buffer) >= MATERIALIZE_CHUNK:
                flush()
            yield row["id"], row["email"], data

    digest = audience_hash(rows())
    flush()
    return summary.recipients, digest, summary


def _delivery_inserter() -> Callable[[list[tuple[Any, ...]]], None]:
    """A fast INSERT of new pending deliveries: (campaign_id, user_id, address, data) rows.

    bulk_create builds a model instance per row, which is most of the time of submitting
    100,000 recipients. This writes the same columns with one executemany per chunk; the
    database's own constraints (bare address, one row per user and per address) still
    check every row.
    """
    meta = Delivery._meta
    json_field = meta.get_field("recipient_data")
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    fixed: dict[str, Any] = {
        "status": Delivery.Status.PENDING,
        "attempts": 0,
        "last_error": "",
        "message_id": "",
        "provider_message_id": "",
        "created_at": now,
        "updated_at": now,
    }
    columns = ["campaign_id", "user_id", "address", "recipient_data", *fixed]
    quote = connection.ops.quote_name
    column_of = {field.attname: field.column for field in meta.concrete_fields}
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(meta.db_table),
        ", ".join(quote(column_of[name]) for name in columns),
        ", ".join(["%s"] * len(columns)),
    )
    constant = tuple(fixed.values())

    def insert(rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        params = [
            (
                campaign_id,
                user_id,
                address,
                json_field.get_db_prep_save(data, connection),
                *constant,
            )
            for campaign_id, user_id, address, data in rows
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)

    return insert


# --- The recipient list -------------------------------------------------------------------


class _Echo:
    def write(self, value: str) -> str:
        return value


# OWASP's CSV injection rule: a spreadsheet runs a cell that starts with one of these.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> str:
    """The cell as text, with a leading apostrophe when a spreadsheet would run it."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def recipients_csv_rows(campaign: Campaign) -> Iterator[str]:
    """The frozen recipient list as CSV lines, streamed; safe to open in a spreadsheet."""
    writer = csv.writer(_Echo())
    yield writer.writerow(["delivery_id", "user_id", "address", "status"])
    rows = Delivery.objects.filter(campaign=campaign).order_by("id")
    for row in rows.values_list("id", "user_id", "address", "status").iterator(
        chunk_size=MATERIALIZE_CHUNK
    ):
        yield writer.writerow([spreadsheet_safe(cell) for cell in row])
