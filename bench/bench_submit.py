"""Benchmark of submit: materializing an audience into the delivery ledger.

    .venv/bin/python bench/bench_submit.py [--sizes 1000,10000,100000]

Runs against a throwaway SQLite database under var/bench/ (recreated each run), or against
PostgreSQL when BENCH_DATABASE_URL is set (a database you do not mind being migrated and
filled). For each audience size it prints:

- baseline: reading the audience rows alone (the query submit cannot avoid), and
  bulk-inserting bare delivery rows with no validation, hashing or digest;
- submit: `submit_for_review` end to end (audience filters, suppression, the address
  validator on every row, frozen recipient data, audience hash, digest, audit event);
- review: building the review page model (samples, pre-flight checks, missing values).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
DATABASE = BENCH_DIR / "bench-submit.sqlite3"


def prepare_environment() -> None:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    if os.environ.get("BENCH_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{DATABASE}{suffix}").unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{DATABASE}"
    os.environ["VAR_DIR"] = str(BENCH_DIR)
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 40)
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    prepare_environment()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    call_command("migrate", verbosity=0)
    from accounts.models import User
    from campaigns import services
    from campaigns.models import Delivery
    from campaigns.review import build_review
    from tests.factories import make_campaign

    author = User.objects.filter(username="bench-author").first() or User.objects.create_user(
        "bench-author", "bench-author@example.com", "x", is_staff=True
    )
    from django.contrib.auth.models import Group

    author.groups.add(Group.objects.get(name="Ops"))
    rows: list[tuple[str, int, float, str]] = []
    made = User.objects.filter(is_staff=False).count()
    for size in [int(s) for s in args.sizes.split(",")]:
        if made < size:
            batch = [
                User(
                    username=f"bench{i}@example.org",
                    email=f"bench{i}@example.org",
                    first_name=("Zoë", "Smith, John", "Ann", "山田")[i % 4],
                    last_name=f"Member {i}",
                    locale=("en", "de", "fr", "ja")[i % 4],
                    attributes={"plan": ("free", "pro")[i % 2]},
                    password="!",
                )
                for i in range(made, size)
            ]
            User.objects.bulk_create(batch, batch_size=2000)
            made = size
        # Sizes grow, and each round adds the members it needs: the audience is all of them.
        audience = User.objects.audience()
        campaign = make_campaign(author, name=f"bench {size}")

        started = time.perf_counter()
        ids = list(
            audience.order_by("id").values_list(
                "id", "email", "first_name", "last_name", "locale", "attributes"
            )
        )
        read = time.perf_counter() - started
        rows.append(("baseline: read audience rows", size, read, ""))

        scratch = make_campaign(author, name=f"scratch {size}")
        started = time.perf_counter()
        with transaction.atomic():
            Delivery.objects.bulk_create(
                [
                    Delivery(campaign=scratch, user_id=i[0], address=i[1], recipient_data={})
                    for i in ids
                ],
                batch_size=2000,
            )
        bare = time.perf_counter() - started
        rows.append(("baseline: bulk-insert bare rows", size, bare, ""))
        Delivery.objects.filter(campaign=scratch).delete()

        started = time.perf_counter()
        campaign = services.submit_for_review(campaign, by=author)
        submit = time.perf_counter() - started
        rows.append(
            (
                "submit_for_review",
                campaign.recipient_count,
                submit,
                f"{campaign.recipient_count / submit:,.0f} rows/s",
            )
        )

        started = time.perf_counter()
        review = build_review(campaign)
        rows.append(
            (
                "build_review (samples + checks)",
                campaign.recipient_count,
                time.perf_counter() - started,
                f"{len(review.samples)} samples",
            )
        )

    print(f"\nSubmit benchmark on {connection.vendor}\n")
    print(f"{'step':<36} {'rows':>9} {'seconds':>9}  note")
    print("-" * 72)
    for step, count, seconds, note in rows:
        print(f"{step:<36} {count:>9,} {seconds:>9.2f}  {note}")


if __name__ == "__main__":
    main()
