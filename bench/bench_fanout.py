"""Benchmark of the fan-out in one process: messages per second through `send_batch`.

    .venv/bin/python bench/bench_fanout.py [--recipients 1000] [--batch-size 50]

Runs against a throwaway SQLite database in a temporary folder (removed afterwards), never
the configured one, with the outbox transport writing into that folder and the rate limit
set so high that it never waits. It materializes N recipients (awkward, non-ASCII display
names), submits and approves one campaign through the services, and measures:

- build: `build_message` alone for every delivery (the floor: rendering and headers);
- build + guard: the same plus the guard's pre-send checks (`preflight`);
- build + bytes: `build_message` plus serializing the message to the raw bytes, through
  Django's generator and through the direct writer the guard and the send use (the same
  bytes, `tests/campaigns/test_wire.py`);
- send_batch: the real path, batch after batch until the campaign is `sent`: claim,
  suppression check, a token from the shared limiter, build, guard, fenced updates,
  the outbox write.

The limiter is the database bucket unless REDIS_URL is set (then Redis, as in
production). Needs SECRET_KEY or DEBUG=true; without SECRET_KEY it sets DEBUG=true for this
throwaway database and turns query logging off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FIRST_NAMES = ("Smith, John", 'Jane "JJ"', "Zoë", "山田 太郎", "Ann", "Łukasz", "O'Brien (work)")


def prepare_environment(workdir: Path) -> None:
    # Set before django.setup(): settings read them once, at import.
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["VAR_DIR"] = str(workdir)
    os.environ["OUTBOX_DIR"] = str(workdir / "outbox")
    os.environ["EMAIL_TRANSPORT"] = "campaigns.backends.OutboxBackend"
    os.environ["CELERY_BROKER_URL"] = f"sqlite:///{workdir / 'broker.sqlite3'}"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if not os.environ.get("SECRET_KEY"):
        os.environ["DEBUG"] = "true"
    sys.path.insert(0, str(ROOT))


def setup_database(recipients: int) -> Any:
    """Migrate the throwaway database; return an approved, sending campaign."""
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from accounts.models import User
    from campaigns import services
    from campaigns.models import Campaign
    from tests.factories import make_campaign

    call_command("migrate", verbosity=0)

    def staff(username: str, role: str) -> User:
        user = User.objects.create_user(
            username=username, email=f"{username}@example.com", password=None, is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        return user

    author, reviewer = staff("olivia", "Ops"), staff("rita", "Compliance")
    User.objects.bulk_create(
        [
            User(
                username=f"m{i:05d}@example.org",
                email=f"m{i:05d}@example.org",
                first_name=FIRST_NAMES[i % len(FIRST_NAMES)],
                last_name=f"Nr {i}",
                password="!",
            )
            for i in range(recipients)
        ]
    )
    campaign = services.submit_for_review(make_campaign(author), by=author)
    # Approval also enqueues batches (into the throwaway broker folder, never consumed)
    # and mails the author (one more .eml in the outbox, counted out below).
    services.approve_campaign(campaign, by=reviewer, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING, campaign.status
    return campaign


def timed(label: str, count: int, run: Callable[[], None]) -> tuple[str, int, float]:
    started = time.perf_counter()
    run()
    return label, count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    try:
        prepare_environment(workdir)
        import django

        django.setup()
        from django.conf import settings
        from django.db import connection
        from django.utils import timezone

        from campaigns import worker
        from campaigns.guard.layers import preflight
        from campaigns.models import Campaign, Delivery
        from campaigns.rendering import build_message, recipient_for_delivery, render_eml

        settings.DEBUG = False  # no query log growing through the run
        settings.SEND_RATE_PER_SECOND = 1e9
        settings.SEND_BURST = 10**9
        settings.SEND_BATCH_SIZE = args.batch_size

        campaign = setup_database(args.recipients)
        deliveries = list(Delivery.objects.filter(campaign=campaign).order_by("id"))
        count = len(deliveries)
        now = timezone.now()
        campaign = Campaign.objects.select_related("sender").get(pk=campaign.pk)

        def build_all() -> None:
            for delivery in deliveries:
                build_message(campaign, recipient_for_delivery(delivery), send_time=now)

        def build_and_guard() -> None:
            for delivery in deliveries:
                message = build_message(campaign, recipient_for_delivery(delivery), send_time=now)
                assert not preflight(message)

        def build_and_serialize() -> None:
            for delivery in deliveries:
                message = build_message(campaign, recipient_for_delivery(delivery), send_time=now)
                message.message().as_bytes(linesep="\r\n")

        def build_and_write() -> None:
            for delivery in deliveries:
                message = build_message(campaign, recipient_for_delivery(delivery), send_time=now)
                render_eml(message)

        outbox = workdir / "outbox"
        before = len(list(outbox.glob("*.eml")))
        batches = 0

        def send_all() -> None:
            nonlocal batches
            while worker.send_batch(campaign.pk).claimed:
                batches += 1

        rows = [
            timed("build_message", count, build_all),
            timed("build + guard preflight", count, build_and_guard),
            timed("build + bytes, Django's generator", count, build_and_serialize),
            timed("build + bytes as sent (direct writer)", count, build_and_write),
            timed(f"send_batch ({args.batch_size}/batch, outbox)", count, send_all),
        ]
        campaign.refresh_from_db()
        summary = worker.delivery_summary(campaign.pk)
        written = len(list(outbox.glob("*.eml"))) - before
        assert summary == {"sent": count}, summary
        assert written == count, written
        assert campaign.status == Campaign.Status.SENT

        limiter = "redis" if settings.REDIS_URL else "database"
        print(
            f"fan-out, {count} deliveries, {connection.vendor}, limiter: {limiter}, "
            f"{batches} batches, {written} .eml files written"
        )
        print(f"{'stage':<38} {'msgs':>6} {'seconds':>8} {'msg/s':>8} {'ms/msg':>7}")
        base = rows[0][2]
        for label, n, seconds in rows:
            print(
                f"{label:<38} {n:>6} {seconds:>8.2f} {n / seconds:>8.0f} "
                f"{1000 * seconds / n:>7.2f}   x{seconds / base:.2f}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
