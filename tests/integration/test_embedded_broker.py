"""The broker under load with real processes: no worker dies, no message is lost or repeated.

Issue 12: on the embedded defaults, kombu's file-system transport handed a worker a message
file another process had not finished writing, and the worker died at once
(``Unrecoverable error: JSONDecodeError``). This runs what a user's machine runs, on
whatever broker the environment names (the embedded default, or Redis in the second CI
pass): two web-style producer processes enqueue while beat ticks, two worker processes
(two pool processes each) consume, and a campaign is approved in the middle of it all.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

from accounts.models import User
from campaigns import services
from campaigns.models import Campaign, Delivery
from campaigns.tasks import health_check
from tests.factories import make_campaign
from tests.stress import handled_tokens

if TYPE_CHECKING:
    from tests.workers import CeleryProcess, CeleryWorkers

pytest_plugins = ["tests.workers"]
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

MESSAGES = 10_000
RECIPIENTS = 400
# What would mean a worker (or one of its pool processes) died, or that its consumer
# reconnected, which hands every unacknowledged message out a second time.
CRASH_SIGNS = (
    "Unrecoverable error",
    "JSONDecodeError",
    "WorkerLostError",
    "exited with 'signal",
    "Connection to broker lost",
)


def make_audience(count: int) -> None:
    User.objects.bulk_create(
        User(username=f"s{i:04d}@example.org", email=f"s{i:04d}@example.org", password="!")
        for i in range(count)
    )


def test_two_producers_two_workers_and_beat_lose_and_repeat_nothing(
    celery_workers: CeleryWorkers, olivia: User, rita: User, tmp_path: Path
) -> None:
    record_dir = tmp_path / "handled"
    record_dir.mkdir()
    outbox = tmp_path / "outbox"
    env = {
        "STRESS_RECORD_DIR": str(record_dir),
        # Beat enqueues a sweep every second: a third producer, and the repair of any lost
        # campaign message.
        "SWEEP_INTERVAL_SECONDS": "1",
        "EMAIL_TRANSPORT": "campaigns.backends.OutboxBackend",
        "OUTBOX_DIR": str(outbox),
        "SEND_RATE_PER_SECOND": "1000",
        "SEND_BURST": "100",
    }
    workers = [
        celery_workers(
            name=f"stress-{n}",
            concurrency=2,
            extra_env=env,
            extra_args=["-I", "tests.stress"],
            ready_timeout=None,
        )
        for n in (1, 2)
    ]
    beat = celery_workers.beat(extra_env=env, ready_timeout=None)
    for worker in workers:
        worker.wait_ready(timeout=180)
    beat.wait_ready(timeout=180)
    main_pids = {worker.name: worker.pid for worker in workers}
    make_audience(RECIPIENTS)

    started = time.monotonic()
    producers = []
    for n in (1, 2):
        log = (tmp_path / f"producer-{n}.log").open("wb")
        producers.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.stress", f"p{n}", str(MESSAGES // 2)],
                cwd=settings.BASE_DIR,
                # The workers' own environment: the same test database and broker.
                env=workers[0].env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    # In the middle of the flood, as the web process does on approval: the campaign's
    # batches are enqueued after the approval commits.
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)

    def campaign_done() -> bool:
        status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
        return bool(status == Campaign.Status.SENT)

    # Wait for the end, or for it to become clear that the end will not come: every worker
    # dead, or no progress for a long while (a lost message is never coming back).
    progress, last_change = -1, time.monotonic()
    while True:
        handled = len(handled_tokens(record_dir))
        if handled != progress:
            progress, last_change = handled, time.monotonic()
        finished = handled >= MESSAGES and campaign_done()
        if finished or not any(w.is_running() for w in workers):
            break
        if time.monotonic() - last_change > 90 or time.monotonic() - started > 900:
            break
        time.sleep(0.5)
    took = time.monotonic() - started
    # Nothing may remain queued (a repeat would still be waiting there); then stop the
    # workers warm, so every line they were writing is written.
    deadline = time.monotonic() + 60
    while any(w.is_running() for w in workers) and time.monotonic() < deadline:
        if celery_workers.queued() == 0:
            break
        time.sleep(0.5)
    alive = {w.name: w.is_running() and w.pid == main_pids[w.name] for w in workers}
    producer_codes = [p.wait(timeout=120) for p in producers]
    celery_workers.stop_all()

    counts = Counter(handled_tokens(record_dir))
    expected = {f"p{n}-{i}" for n in (1, 2) for i in range(MESSAGES // 2)}
    missing = expected - set(counts)
    repeated = {token: n for token, n in counts.items() if n > 1}
    crashes = {
        process.name: [sign for sign in CRASH_SIGNS if sign in process.log_text()]
        for process in [*workers, beat]
    }
    statuses = Counter(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    report = (
        f"broker {settings.CELERY_BROKER_URL.split('://')[0]}: {MESSAGES} messages in "
        f"{took:.0f}s; workers alive {alive}; missing {len(missing)}; repeated "
        f"{len(repeated)}; crash signs {crashes}; producers exited {producer_codes}; "
        f"campaign deliveries {dict(statuses)}"
    )
    print(report)
    print(_producer_logs(tmp_path))
    details = report + "\n" + "\n".join(_tails([*workers, beat]))

    assert all(alive.values()), details
    assert not any(crashes.values()), details
    assert producer_codes == [0, 0], details + "\n" + _producer_logs(tmp_path)
    assert not missing, details + f"\nfirst missing: {sorted(missing)[:5]}"
    assert not repeated, details + f"\nfirst repeated: {sorted(repeated.items())[:5]}"
    assert set(counts) == expected
    # The campaign went out completely, one message per recipient, whatever was lost on
    # the way (the sweeper re-dispatches due work that no broker message carries).
    assert statuses == Counter({Delivery.Status.SENT: RECIPIENTS}), details
    assert len(list(outbox.glob("*.eml"))) == RECIPIENTS


def _tails(processes: list[CeleryProcess]) -> list[str]:
    return [f"--- {p.name} (rc={p.returncode}) ---\n{p.log_tail(30)}" for p in processes]


def _producer_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("producer-*"))


# --- processes starting together on a new broker file ----------------------------------------

OPEN_AND_PUT = """
import sys, time
from kombu import Connection
folder, rounds, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for n in range(rounds):
    # Every process opens round n's new file at the same moment, as web, worker and beat
    # do on a first `make demo`.
    time.sleep(max(0.0, start + n * 0.4 - time.time()))
    url = f"sqlite:///{folder}/broker-{n}.sqlite3"
    with Connection(url, transport="config.broker:SQLiteTransport") as conn:
        conn.SimpleQueue("first").put({"round": n})
"""


def test_processes_opening_a_new_embedded_broker_together_all_get_in(tmp_path: Path) -> None:
    if not settings.CELERY_BROKER_URL.startswith("sqlite:///"):
        pytest.skip("the broker is not the embedded SQLite broker")
    rounds, processes = 10, 6
    start = time.time() + 5  # time for every interpreter to start and import kombu
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_PUT, str(tmp_path), str(rounds), str(start)],
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(processes)
    ]
    outcomes = [
        (child.wait(timeout=120), child.stdout.read() if child.stdout else "") for child in children
    ]

    assert [code for code, _ in outcomes] == [0] * processes, "\n".join(o for _, o in outcomes)
    for n in range(rounds):
        with sqlite3.connect(tmp_path / f"broker-{n}.sqlite3") as broker:
            queued = broker.execute("SELECT count(*) FROM kombu_message").fetchone()[0]
            queues = broker.execute("SELECT count(*) FROM kombu_queue").fetchone()[0]
        assert (queued, queues) == (processes, 1)


# --- a message the worker cannot decode ------------------------------------------------------


def push_raw(payload: bytes) -> None:
    """Put bytes straight onto the default queue, past kombu, as a torn write would."""
    from config.celery import app

    queue = app.conf.task_default_queue
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://")):
        import redis

        redis.Redis.from_url(url).lpush(queue, payload)
        return
    assert url.startswith("sqlite:///"), url
    with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as db:
        db.execute(
            "INSERT INTO kombu_message (visible, payload, version, queue_id) "
            "SELECT 1, ?, 1, id FROM kombu_queue WHERE name = ?",
            # Bytes are stored as a BLOB, which reaches kombu as bytes, as they were pushed.
            (payload, queue),
        )
        assert db.execute("SELECT changes()").fetchone() == (1,), "no such queue yet"


def publish_body(body: bytes, content_type: str) -> None:
    """A well-formed kombu message for a real task whose body is not what it claims."""
    from config.celery import app

    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            routing_key=app.conf.task_default_queue,
            serializer=None,
            content_type=content_type,
            content_encoding="utf-8",
            headers={"task": "countersign.health_check", "id": str(uuid.uuid4())},
        )


def test_worker_logs_and_drops_messages_it_cannot_decode_and_keeps_answering(
    celery_workers: CeleryWorkers,
) -> None:
    worker = celery_workers(name="undecodable", concurrency=1)
    pool = worker.child_pids()

    push_raw(b'{"body": "eyJ0YXNrIjog')  # half a message: what a torn write leaves
    push_raw(b"\xff\xfe not even text")
    push_raw(json.dumps([1, 2, 3]).encode())  # JSON, but not a message
    publish_body(b"{not json", "application/json")  # Celery cannot decode the body
    publish_body(b"\x80\x04K\x01.", "application/x-python-serialize")  # pickle: refused
    token = uuid.uuid4().hex
    answer = health_check.delay(token).get(timeout=120)

    assert answer["token"] == token
    assert answer["pid"] in pool
    assert worker.is_running() and worker.child_pids() == pool
    log = worker.log_text()
    assert "Unrecoverable error" not in log
    assert log.count("Dropped a message from queue") == 3, worker.log_tail(60)
    # The two well-formed envelopes reach Celery, which logs and drops their bodies.
    assert "Can't decode message body" in log
    assert "Refusing to deserialize untrusted content of type pickle" in log
