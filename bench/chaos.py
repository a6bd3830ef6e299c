"""Crash test at the scale of a real campaign: kill workers, restart Redis, pause, check the ledger.

    .venv/bin/python bench/chaos.py                        # 20,000 recipients, 5 kills
    .venv/bin/python bench/chaos.py --recipients 2000 --kills 2 --no-redis-restart

Needs PostgreSQL: DATABASE_URL names a server where that role may create databases; the
bench makes a throwaway database beside the named one and drops it afterwards (--keep to
look at it). Redis is its own: a `redis-server` on a free loopback port, no persistence,
started and stopped by the bench, so restarting it touches nothing shared.

What it does: an audience of N members with awkward names, a campaign submitted and
approved through the services, two `celery worker` processes sending through Django's SMTP
backend to an aiosmtpd sink in this process. While they send it SIGKILLs a worker (and its
pool) at random moments, restarting it each time; restarts Redis once (every queued task
message is lost); and pauses and resumes the campaign once. It sweeps every two seconds, as
beat would. Then the checker reads the sink's log and the ledger:

- every delivery is terminal (nothing pending, claimed, sending or waiting to retry);
- every message at the sink has one envelope recipient and one To address, equal to the
  address of the delivery its Message-ID names;
- no address received two messages unless its delivery is flagged `unknown`;
- none is lost: every delivery marked sent arrived, and every unflagged one arrived once.

It prints the counts and exits 1 if any of those fails. `tests/integration/test_chaos.py`
runs the short version (2,000 recipients, two kills) in `make test` on PostgreSQL + Redis.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from campaigns.models import Campaign
    from tests.smtp_sink import SmtpSink
    from tests.workers import WorkerProcess

FIRST_NAMES = ("Smith, John", 'Jane "JJ"', "Zoë", "山田 太郎", "Bob; Carol", "O'Brien (work)", "")
# Every wait is for a condition; these only bound it, for two shared cores.
SENT_DEADLINE_SECONDS = 1800.0
SWEEP_EVERY_SECONDS = 2.0


@dataclass
class ChaosPlan:
    recipients: int = 20_000
    kills: int = 5
    redis_restart: bool = True
    pause_resume: bool = True
    seed: int = 0
    lease_seconds: int = 15
    # Kills, the restart and the pause happen when this share of the messages has arrived.
    earliest: float = 0.05
    latest: float = 0.85


@dataclass
class ChaosReport:
    recipients: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    not_terminal: int = 0
    bad_envelopes: int = 0
    foreign_messages: int = 0
    mismatched: int = 0
    duplicates_flagged: int = 0
    duplicates_unflagged: int = 0
    lost: int = 0
    unknown_received: int = 0
    unknown_not_received: int = 0
    kills: int = 0
    redis_restarts: int = 0
    pauses: int = 0
    sweeps_redispatched: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.not_terminal
            or self.bad_envelopes
            or self.foreign_messages
            or self.mismatched
            or self.duplicates_unflagged
            or self.lost
        )

    def table(self) -> str:
        rows = [
            ("recipients", self.recipients),
            ("deliveries by status", dict(sorted(self.deliveries.items()))),
            ("messages at the sink", self.messages),
            ("worker kills (SIGKILL)", self.kills),
            ("Redis restarts", self.redis_restarts),
            ("pause + resume", self.pauses),
            ("sweeps that re-dispatched", self.sweeps_redispatched),
            ("not terminal", self.not_terminal),
            ("messages not to exactly one recipient", self.bad_envelopes),
            ("messages naming no delivery", self.foreign_messages),
            ("recipient differs from its delivery", self.mismatched),
            ("lost", self.lost),
            ("duplicates, unflagged", self.duplicates_unflagged),
            ("duplicates, flagged unknown", self.duplicates_flagged),
            ("unknown, arrived once", self.unknown_received),
            ("unknown, never arrived", self.unknown_not_received),
            ("seconds", round(self.seconds, 1)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines.append("RESULT: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


# --- Setting up a campaign ---------------------------------------------------------------------


def make_campaign_sending(recipients: int, tag: str) -> Campaign:
    """N audience members, two staff, one approved campaign (sending starts on commit)."""
    from django.contrib.auth.models import Group

    from accounts.models import User
    from campaigns import services
    from tests.factories import make_campaign

    def staff(username: str, role: str) -> User:
        user = User.objects.create_user(
            username=username, email=f"{username}@example.com", password=None, is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        return user

    author = staff(f"chaos-author-{tag}", "Ops")
    reviewer = staff(f"chaos-reviewer-{tag}", "Compliance")
    batch: list[User] = []
    for i in range(recipients):
        address = f"chaos-{tag}-{i:06d}@example.org"
        batch.append(
            User(
                username=address,
                email=address,
                first_name=FIRST_NAMES[i % len(FIRST_NAMES)],
                last_name=f"Nr {i}",
                password="!",
            )
        )
        if len(batch) == 5000:
            User.objects.bulk_create(batch)
            batch = []
    User.objects.bulk_create(batch)
    # The database holds this run's members only: the whole audience is the campaign's.
    campaign = make_campaign(author, name=f"Chaos {tag}")
    campaign = services.submit_for_review(campaign, by=author)
    services.approve_campaign(campaign, by=reviewer, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    return campaign


# --- The run -----------------------------------------------------------------------------------


def _status(campaign_id: int) -> str:
    from campaigns.models import Campaign

    return str(Campaign.objects.filter(pk=campaign_id).values_list("status", flat=True).get())


def run_chaos(
    plan: ChaosPlan,
    *,
    sink: SmtpSink,
    start_worker: Callable[[str], WorkerProcess],
    restart_redis: Callable[[], None] | None,
    tag: str,
    log: Callable[[str], None] = print,
) -> ChaosReport:
    """Send one campaign through two workers while breaking things; return the checker's report."""
    from campaigns import services
    from campaigns import worker as send_worker
    from campaigns.models import Campaign

    rng = random.Random(plan.seed)
    report = ChaosReport(recipients=plan.recipients)
    n = plan.recipients

    def at() -> int:
        return int(n * rng.uniform(plan.earliest, plan.latest))

    events: list[tuple[int, str]] = [(at(), "kill") for _ in range(plan.kills)]
    if plan.redis_restart and restart_redis is not None:
        events.append((at(), "redis"))
    if plan.pause_resume:
        events.append((at(), "pause"))
    events.sort()
    log(f"chaos plan (messages at the sink -> action): {events}")

    started = time.monotonic()
    generation = Counter[str]()
    workers: dict[str, WorkerProcess] = {}

    def launch(slot: str) -> None:
        generation[slot] += 1
        workers[slot] = start_worker(f"chaos-{slot}-{generation[slot]}")

    launch("a")
    launch("b")
    for process in workers.values():
        process.wait_ready(timeout=180)
    log(f"making {n} recipients and approving the campaign ...")
    campaign = make_campaign_sending(n, tag)
    log(f"campaign {campaign.pk} is {campaign.status}")

    last_sweep = 0.0

    def sweep() -> None:
        nonlocal last_sweep
        if time.monotonic() - last_sweep < SWEEP_EVERY_SECONDS:
            return
        last_sweep = time.monotonic()
        try:
            result = send_worker.sweep()
        except Exception as exc:  # noqa: BLE001 - a sweep during the Redis restart may fail; beat's next tick runs again
            log(
                f"sweep failed ({type(exc).__name__}: {exc}); the next one runs in {SWEEP_EVERY_SECONDS}s"
            )
            return
        if result.redispatched:
            report.sweeps_redispatched += 1

    deadline = started + SENT_DEADLINE_SECONDS
    while True:
        sweep()
        arrived = sink.count()
        while events and arrived >= events[0][0]:
            _, action = events.pop(0)
            if action == "kill":
                slot = rng.choice(sorted(workers))
                victims = workers[slot].kill9()
                report.kills += 1
                log(f"[{arrived}] SIGKILL {workers[slot].name} ({len(victims)} processes)")
                launch(slot)
            elif action == "redis" and restart_redis is not None:
                log(f"[{arrived}] restarting Redis (no persistence: every queued message is lost)")
                restart_redis()
                report.redis_restarts += 1
            elif action == "pause":
                author = campaign.author
                services.pause_campaign(campaign, by=author, reason="chaos: pause")
                log(f"[{arrived}] paused")
                time.sleep(3.0)
                services.resume_campaign(Campaign.objects.get(pk=campaign.pk), by=author)
                report.pauses += 1
                log(f"[{sink.count()}] resumed")
        status = _status(campaign.pk)
        if status == Campaign.Status.SENT:
            if events:
                report.notes.append(f"sent before these happened: {events}")
            break
        if status in (Campaign.Status.PAUSED, Campaign.Status.CANCELLED) and not events:
            report.notes.append(f"the campaign stopped as {status}")
            break
        if time.monotonic() > deadline:
            report.notes.append(f"not sent after {SENT_DEADLINE_SECONDS}s: {status}")
            break
        for slot, process in list(workers.items()):
            if not process.is_running():
                report.notes.append(f"{process.name} exited by itself; restarted")
                launch(slot)
        time.sleep(0.2)
    report.seconds = time.monotonic() - started
    for process in workers.values():
        process.stop()
    check(campaign.pk, sink, report)
    return report


# --- The checker ---------------------------------------------------------------------------------


def check(campaign_id: int, sink: SmtpSink, report: ChaosReport) -> ChaosReport:
    """Compare what crossed the wire with the ledger."""
    from campaigns.models import Delivery

    terminal_ok = {
        Delivery.Status.SENT,
        Delivery.Status.DELIVERED,
        Delivery.Status.UNKNOWN,
        Delivery.Status.FAILED,
        Delivery.Status.SKIPPED,
        Delivery.Status.BLOCKED,
        Delivery.Status.BOUNCED,
        Delivery.Status.COMPLAINED,
    }
    by_message_id: dict[str, tuple[int, str, str]] = {}
    statuses: dict[int, str] = {}
    addresses: dict[int, str] = {}
    rows = Delivery.objects.filter(campaign_id=campaign_id).values_list(
        "pk", "address", "status", "message_id"
    )
    for pk, address, status, message_id in rows.iterator(chunk_size=5000):
        statuses[pk] = status
        addresses[pk] = address.lower()
        report.deliveries[status] += 1
        if message_id:
            by_message_id[message_id.strip()] = (pk, address.lower(), status)
        if status not in terminal_ok:
            report.not_terminal += 1

    parser = BytesHeaderParser()
    received: Counter[int] = Counter()
    for message in sink.messages():
        report.messages += 1
        headers = parser.parsebytes(message.data)
        if len(message.rcpt_tos) != 1:
            report.bad_envelopes += 1
            continue
        rcpt = message.rcpt_tos[0].lower()
        to = [addr.lower() for _name, addr in getaddresses(headers.get_all("To") or []) if addr]
        if to != [rcpt] or headers.get_all("Cc") or headers.get_all("Bcc"):
            report.bad_envelopes += 1
        match = by_message_id.get(str(headers.get("Message-ID", "")).strip())
        if match is None:
            report.foreign_messages += 1
            continue
        pk, address, _status = match
        if address != rcpt:
            report.mismatched += 1
        received[pk] += 1

    for pk, status in statuses.items():
        count = received[pk]
        if status == Delivery.Status.UNKNOWN:
            if count > 1:
                report.duplicates_flagged += 1
            elif count == 1:
                report.unknown_received += 1
            else:
                report.unknown_not_received += 1
            continue
        if count > 1:
            report.duplicates_unflagged += 1
        if status in (Delivery.Status.SENT, Delivery.Status.DELIVERED) and count == 0:
            report.lost += 1
        if status in (Delivery.Status.PENDING, Delivery.Status.RETRY_WAIT) and count == 0:
            # Never sent and never will be: a stuck row is a lost message too.
            report.lost += 1
    return report


# --- Running it from the command line -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A redis-server of the bench's own on a loopback port: no persistence, restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench/chaos.py needs redis-server on PATH")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def throwaway_database(url: str, keep: bool) -> Iterator[str]:
    """A new database beside the one `url` names; dropped afterwards unless `keep`."""
    import psycopg

    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/')}_chaos_{os.getpid()}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        if not keep:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--no-pause", action="store_true")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench/chaos.py needs DATABASE_URL to name PostgreSQL", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="countersign-chaos-"))
    redis = OwnRedis(workdir)
    redis.start()
    plan = ChaosPlan(
        recipients=args.recipients,
        kills=args.kills,
        redis_restart=not args.no_redis_restart,
        pause_resume=not args.no_pause,
        seed=args.seed,
    )
    print(f"seed {plan.seed}; workdir {workdir}; redis on {redis.url}")
    try:
        with throwaway_database(url, args.keep) as database_url:
            os.environ.update(
                {
                    "DJANGO_SETTINGS_MODULE": "config.settings",
                    "DATABASE_URL": database_url,
                    "CELERY_BROKER_URL": f"{redis.url}/0",
                    "CELERY_RESULT_BACKEND": f"{redis.url}/0",
                    "REDIS_URL": f"{redis.url}/1",
                    "VAR_DIR": str(workdir),
                    "AUDIT_ANCHOR_PATH": str(workdir / "anchors.jsonl"),
                    # This process's own mail (review notices) stays in memory; only the
                    # workers send to the sink, so everything there is a campaign delivery.
                    "EMAIL_TRANSPORT": "django.core.mail.backends.locmem.EmailBackend",
                    "CLAIM_LEASE_SECONDS": str(plan.lease_seconds),
                    "SEND_RATE_PER_SECOND": "100000",
                    "SEND_BURST": "1000",
                    "LOG_LEVEL": "WARNING",
                }
            )
            if not os.environ.get("SECRET_KEY"):
                os.environ["DEBUG"] = "true"
            os.environ.setdefault("SECOND_FACTOR_REQUIRED", "false")
            sys.path.insert(0, str(ROOT))
            import django

            django.setup()
            from django.core.management import call_command

            from tests.smtp_sink import SmtpSink
            from tests.workers import start_worker

            call_command("migrate", verbosity=0)
            with SmtpSink() as sink:
                worker_env = {**sink.env(), "CLAIM_LEASE_SECONDS": str(plan.lease_seconds)}
                report = run_chaos(
                    plan,
                    sink=sink,
                    start_worker=lambda name: start_worker(name=name, extra_env=worker_env),
                    restart_redis=redis.restart,
                    tag=f"s{plan.seed}",
                )
            print(report.table())
            return 0 if report.ok else 1
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
