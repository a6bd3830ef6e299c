"""Freezing a large audience (submit) against a raw INSERT ... SELECT of the same rows.

    make bench-materialize                         # N = 1,000,000, PostgreSQL
    .venv/bin/python bench/materialize.py --n 100000 --rounds 3

PostgreSQL only (DATABASE_URL, default the bench database below, whose public schema is
dropped and re-created). N audience members are written by SQL (generate_series), then
each round times, alternating:

- raw: one INSERT ... SELECT of the same Delivery rows (same columns, same recipient data
  JSON built the same way, into a fresh campaign) with nothing else: no filters, no
  suppression check, no hash, no audit. The floor.
- freeze: `campaigns.audience.freeze_audience` (what submit runs: filters, suppressions,
  the INSERT ... SELECT, the counts, and the audience hash read back in user-id order).

Each round deletes the rows it wrote afterwards (outside the clock) and VACUUMs, so both
variants insert into the same table state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE = "postgres://countersign@127.0.0.1:5432/countersign_speed"

RAW_SQL = """
INSERT INTO campaigns_delivery (campaign_id, user_id, address, recipient_data, status,
    attempts, last_error, message_id, provider_message_id, created_at, updated_at)
SELECT %s, u.id, u.email,
    u.attributes || jsonb_build_object('first_name', u.first_name, 'last_name', u.last_name,
        'email', u.email, 'locale', u.locale),
    'pending', 0, '', '', '', now(), now()
FROM accounts_user u
WHERE u.is_active AND NOT u.is_staff
ORDER BY u.id
"""


def setup() -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE)
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 40)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    from bench.database import ensure_database

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()


def create_audience(n: int) -> None:
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO accounts_user (password, is_superuser, username, first_name,
                last_name, is_staff, is_active, date_joined, email, locale, attributes,
                seed_addresses, time_zone, password_owner_only)
            SELECT '!', false, 'm' || i || '@example.org',
                (ARRAY['Ann', 'Zoë', 'Łukasz', 'Smith, John'])[1 + i %% 4], 'Nr ' || i,
                false, true, now(), 'm' || i || '@example.org', 'en',
                jsonb_build_object('plan', 'basic'), '', 'UTC', false
            FROM generate_series(1, %s) AS i
            """,
            [n],
        )
        cursor.execute("ANALYZE")


def new_campaign() -> int:
    from django.contrib.auth.models import Group

    from accounts.models import User
    from tests.factories import make_campaign

    author, created = User.objects.get_or_create(
        username="olivia", defaults={"email": "olivia@example.com", "is_staff": True}
    )
    if created:
        author.groups.add(Group.objects.get(name="Ops"))
    return int(make_campaign(author).pk)


def clean(campaign_id: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM campaigns_delivery WHERE campaign_id = %s", [campaign_id])
    old = connection.autocommit
    connection.set_autocommit(True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE campaigns_delivery")
    connection.set_autocommit(old)


def run_raw() -> tuple[float, int]:
    from django.db import connection, transaction

    campaign_id = new_campaign()
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RAW_SQL, [campaign_id])
        rows = cursor.rowcount
    seconds = time.perf_counter() - started
    clean(campaign_id)
    return seconds, rows


def run_freeze() -> tuple[float, int]:
    from django.db import transaction

    from campaigns.audience import freeze_audience
    from campaigns.models import Campaign

    campaign = Campaign.objects.get(pk=new_campaign())
    started = time.perf_counter()
    with transaction.atomic():
        count, digest, _summary = freeze_audience(campaign)
    seconds = time.perf_counter() - started
    assert len(digest) == 64
    clean(campaign.pk)
    return seconds, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench/materialize.py needs PostgreSQL (DATABASE_URL)")
    print(f"materialize bench: N={args.n:,}, {args.rounds} rounds, PostgreSQL")
    create_audience(args.n)
    times: dict[str, list[float]] = {"raw INSERT ... SELECT": [], "freeze_audience": []}
    for round_no in range(1, args.rounds + 1):
        order = [("raw INSERT ... SELECT", run_raw), ("freeze_audience", run_freeze)]
        if round_no % 2 == 0:
            order.reverse()
        for name, run in order:
            seconds, rows = run()
            assert rows == args.n, (name, rows)
            times[name].append(seconds)
            print(f"  round {round_no} {name:<22} {seconds:7.2f} s", flush=True)
    print()
    print(f"| variant (N = {args.n:,}) | median s | min–max | µs per row |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {min(values):.2f}–{max(values):.2f} "
            f"| {1e6 * median / args.n:.1f} |"
        )
    ratio = statistics.median(times["freeze_audience"]) / statistics.median(
        times["raw INSERT ... SELECT"]
    )
    print(f"freeze / raw: {ratio:.2f}x")


if __name__ == "__main__":
    main()
