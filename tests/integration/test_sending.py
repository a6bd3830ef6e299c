"""The fan-out with real worker processes: it cannot leak, double-send or lose a message.

Each test starts `celery -A config worker` OS processes (tests/workers.py) on the test
database and the configured broker, and points them at a real transport on loopback: an
aiosmtpd sink (tests/smtp_sink.py) or the Postmark API stub (tests/postmark_stub.py). Rows
are committed (transaction=True), so the workers see them; the harness stops the workers
before the tables are flushed.

What is checked is what crossed the wire: the sink's envelope and bytes, the stub's
requests. The ledger (`Delivery`) must agree with it exactly.

The test process uses the same broker as the workers (the same environment), so the
approval's `transaction.on_commit` dispatch and the sweeper's re-dispatch reach them. Its
own mail (review and approval notices to staff) stays on the locmem transport the conftest
sets, so the sink and the stub only ever see campaign deliveries.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from email.message import EmailMessage as ParsedMessage
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from accounts.models import User
from campaigns import services
from campaigns import worker as send_worker
from campaigns.models import Campaign, Delivery, Suppression
from tests.factories import make_campaign
from tests.postmark_stub import PostmarkStub, Reply
from tests.smtp_sink import SmtpSink

if TYPE_CHECKING:
    from tests.workers import CeleryProcess, CeleryWorkers

# Loaded as a plugin (not imported) so pytest owns its fixtures; see tests/integration/test_celery_processes.py.
pytest_plugins = ["tests.workers"]
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Display names that have broken one-to-one sending elsewhere: list separators, quotes,
# comments, group syntax, encoded-word look-alikes, non-ASCII, very long, and names that
# carry an address of their own (one that belongs to no user, so the content guard lets
# it through and the leak checks below must still find exactly one recipient).
OUTSIDER = "eve.outsider@elsewhere.example"
AWKWARD_NAMES: list[tuple[str, str]] = [
    ("Smith, John", ""),
    ('Jane "JJ"', "Doe"),
    ("Zoë", "Ünïcødé"),
    ("山田", "太郎"),
    ("O'Brien (work)", "Ltd."),
    ("Bob; Carol", "Dave"),
    (f"Eve {OUTSIDER}", ""),
    ("Mallory <mallory@outsider.example>", ""),
    ("=?utf-8?q?Mr=2C_Fake?=", ""),
    ("Ann" + " Very-Long-Name" * 9, "Überlänge-Nachname"),
    ("🎉 Party", "Ω"),
    ("Undisclosed-recipients:;", ""),
    ("", ""),
]
RECIPIENT_FIELDS = {"to", "cc", "bcc"}
ADDRESS_TOKEN = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
# Celery logs each task's return value: send_batch returns what it claimed and sent.
BATCH_LOG = re.compile(
    r"Task countersign\.send_batch\[[^\]]+\] succeeded in [\d.]+s: "
    r"\{'claimed': (\d+), 'sent': (\d+)"
)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def workers(smtp_sink: SmtpSink, celery_workers: CeleryWorkers) -> CeleryWorkers:
    """`celery_workers`, set up after the sink so that its teardown (stopping every
    worker) runs before the sink closes: no worker is left sending into a closed port."""
    return celery_workers


def sending_settings(
    settings: Any,
    *,
    rate: float = 1000.0,
    burst: int = 100,
    batch: int = 50,
    lease: int = 300,
    env: Mapping[str, str],
) -> dict[str, str]:
    """Apply the sending knobs to this process and return them as a worker environment.

    The test process dispatches (approval, resume) and sweeps, so it must agree with the
    workers on batch size, lease and parallelism.
    """
    settings.SEND_RATE_PER_SECOND = rate
    settings.SEND_BURST = burst
    settings.SEND_BATCH_SIZE = batch
    settings.CLAIM_LEASE_SECONDS = lease
    settings.SEND_PARALLEL_BATCHES = 2
    return {
        "SEND_RATE_PER_SECOND": str(rate),
        "SEND_BURST": str(burst),
        "SEND_BATCH_SIZE": str(batch),
        "CLAIM_LEASE_SECONDS": str(lease),
        "SEND_PARALLEL_BATCHES": "2",
        **env,
    }


# --- helpers -------------------------------------------------------------------------------


def make_audience(count: int) -> list[str]:
    """`count` audience members with awkward names; every seventh address in mixed case."""
    users = []
    for i in range(count):
        first, last = AWKWARD_NAMES[i % len(AWKWARD_NAMES)]
        address = f"Member.{i:04d}@Example.org" if i % 7 == 0 else f"m{i:04d}@example.org"
        users.append(
            User(
                username=address.lower(),
                email=address,
                first_name=first,
                last_name=last,
                password="!",  # unusable: audience members never log in
            )
        )
    User.objects.bulk_create(users)
    return [user.email for user in users]


def approve_new_campaign(author: User, reviewer: User, **fields: Any) -> Campaign:
    """Compose, submit and approve; the approval dispatches send_batch after its commit."""
    campaign = services.submit_for_review(make_campaign(author, **fields), by=author)
    services.approve_campaign(campaign, by=reviewer, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    return campaign


def campaign_status(campaign: Campaign) -> str:
    return str(Campaign.objects.filter(pk=campaign.pk).values_list("status", flat=True).get())


def count_status(campaign: Campaign, *statuses: str) -> int:
    return Delivery.objects.filter(campaign=campaign, status__in=statuses).count()


def explain(campaign: Campaign, processes: Sequence[CeleryProcess] = ()) -> str:
    lines = [
        f"campaign {campaign.pk}: {campaign_status(campaign)}",
        f"deliveries: {send_worker.delivery_summary(campaign.pk)}",
    ]
    for process in processes:
        lines.append(f"--- {process.name} (rc={process.returncode}) ---\n{process.log_tail(25)}")
    return "\n".join(lines)


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] = lambda: "",
    interval: float = 0.2,
    every: Callable[[], object] | None = None,
) -> float:
    """Poll until `predicate()`; fail with diagnostics after `timeout` seconds.

    `every` runs before each poll (e.g. a sweep, as beat would run it). Returns the wait.
    """
    started = time.monotonic()
    while True:
        if every is not None:
            every()
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diagnostics()}")
        time.sleep(interval)


def wait_until_quiet(sink: SmtpSink, *, quiet_for: float, timeout: float) -> int:
    """Wait until the sink has received nothing new for `quiet_for` seconds; its count then."""
    started = time.monotonic()
    count, since = sink.count(), time.monotonic()
    while time.monotonic() - since < quiet_for:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the sink kept receiving for {timeout}s (now {count})")
        time.sleep(0.1)
        now = sink.count()
        if now != count:
            count, since = now, time.monotonic()
    return count


def wait_until_sent(
    campaign: Campaign,
    *,
    timeout: float,
    what: str,
    diagnostics: Callable[[], str],
    interval: float = 0.5,
    every: Callable[[], object] | None = None,
) -> float:
    """Wait for the campaign to be `sent`; fail at once if it stopped instead (a guard
    violation pauses it), rather than at the deadline."""
    stopped = {Campaign.Status.SENT, Campaign.Status.PAUSED, Campaign.Status.CANCELLED}
    waited = wait_until(
        lambda: campaign_status(campaign) in stopped,
        timeout=timeout,
        what=what,
        diagnostics=diagnostics,
        interval=interval,
        every=every,
    )
    assert campaign_status(campaign) == Campaign.Status.SENT, diagnostics()
    return waited


def worker_idle(workers: CeleryWorkers, process: CeleryProcess) -> bool:
    """Nothing waits in the broker and every send_batch the worker received has finished."""
    log = process.log_text()
    received = len(re.findall(r"Task countersign\.send_batch\[[^\]]+\] received", log))
    finished = len(re.findall(r"Task countersign\.send_batch\[[^\]]+\] (?:succeeded|raised)", log))
    return workers.queued() == 0 and received == finished


def sent_per_worker(process: CeleryProcess) -> int:
    return sum(int(sent) for _claimed, sent in BATCH_LOG.findall(process.log_text()))


def header_recipients(raw: bytes) -> tuple[set[str], list[str], list[str]]:
    """(recipient header names, addresses by getaddresses, addresses by policy.default).

    Every To, Cc, Bcc and Resent-* field, parsed by both parsers: Python 3.11's
    getaddresses predates the strict-parsing fix, so a name can fool one and not the other.
    """
    legacy = email.message_from_bytes(raw)
    modern = email.message_from_bytes(raw, policy=email.policy.default)
    names = {
        name.lower()
        for name in legacy.keys()
        if name.lower() in RECIPIENT_FIELDS or name.lower().startswith("resent-")
    }
    by_getaddresses = [
        address.lower()
        for name in sorted(names)
        for _display, address in getaddresses([str(v) for v in legacy.get_all(name) or []])
        if address
    ]
    by_policy = [
        address.addr_spec.lower()
        for name in sorted(names)
        for header in modern.get_all(name) or []
        for address in getattr(header, "addresses", ())
    ]
    return names, by_getaddresses, by_policy


def content_addresses(parsed: ParsedMessage) -> set[str]:
    """Address-like tokens anywhere a reader could see them: decoded headers and text parts,
    also after undoing HTML entities and %-escapes."""
    texts = [str(value) for _name, value in parsed.items()]
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            assert isinstance(part, ParsedMessage)
            texts.append(str(part.get_content()))
    tokens: set[str] = set()
    for text in texts:
        unescaped = html.unescape(text)
        for variant in (text, unescaped, unquote(unescaped)):
            tokens.update(token.rstrip(".").lower() for token in ADDRESS_TOKEN.findall(variant))
    return tokens


def assert_each_sent_exactly_once(campaign: Campaign, sink: SmtpSink) -> None:
    deliveries = list(Delivery.objects.filter(campaign=campaign))
    counts = sink.rcpt_counts()
    assert {d.status for d in deliveries} == {Delivery.Status.SENT}, explain(campaign)
    assert {d.address.lower() for d in deliveries} == set(counts)
    assert set(counts.values()) == {1}, [a for a, n in counts.items() if n > 1][:10]
    assert sink.count() == len(deliveries)


# --- 1. two workers, 2,000 recipients, real SMTP -------------------------------------------


@pytest.mark.needs_postgres
@pytest.mark.needs_redis
def test_two_workers_smtp_fanout_2000(
    smtp_sink: SmtpSink, workers: CeleryWorkers, olivia: User, rita: User, settings: Any
) -> None:
    env = sending_settings(settings, env=smtp_sink.env())
    addresses = make_audience(2000)
    first = workers(name="fanout-1", extra_env=env, ready_timeout=None)
    second = workers(name="fanout-2", extra_env=env, ready_timeout=None)
    first.wait_ready()
    second.wait_ready()

    campaign = approve_new_campaign(olivia, rita)
    wait_until_sent(
        campaign,
        timeout=240,
        what="the campaign to be sent",
        diagnostics=lambda: explain(campaign, [first, second]),
        interval=0.5,
    )
    workers.stop_all()  # every log line is written; nothing more can arrive

    deliveries = {d.address.lower(): d for d in Delivery.objects.filter(campaign=campaign)}
    members = {address.lower() for address in addresses}
    assert set(deliveries) == members
    received = smtp_sink.messages()
    assert len(received) == 2000

    seen: Counter[str] = Counter()
    outsider_rendered = False
    for message in received:
        assert len(message.rcpt_tos) == 1, message.rcpt_tos
        rcpt = message.rcpt_tos[0].lower()
        seen[rcpt] += 1
        delivery = deliveries[rcpt]

        names, by_getaddresses, by_policy = header_recipients(message.data)
        assert names == {"to"}, f"{rcpt}: recipient fields {names}"
        assert by_getaddresses == [rcpt], f"{rcpt}: getaddresses found {by_getaddresses}"
        assert by_policy == [rcpt], f"{rcpt}: policy.default found {by_policy}"

        parsed = message.parsed()
        assert str(parsed["Message-ID"]).strip() == delivery.message_id
        tokens = content_addresses(parsed)
        leaked = (tokens & members) - {rcpt}
        assert not leaked, f"{rcpt}'s message shows {sorted(leaked)[:5]}"
        outsider_rendered = outsider_rendered or OUTSIDER in tokens

    # The scan above can see addresses: the name carrying one was rendered and found.
    assert outsider_rendered
    assert set(seen) == members and set(seen.values()) == {1}
    assert {d.status for d in deliveries.values()} == {Delivery.Status.SENT}
    assert all(d.attempts == 1 and d.sent_at is not None for d in deliveries.values())
    # A comma in a display name stays inside the one mailbox.
    smith = next(m for m in received if m.rcpt_tos[0].lower() == "m0013@example.org")
    (mailbox,) = smith.parsed()["To"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == ("Smith, John", "m0013@example.org")
    # The work was shared: both worker processes sent, and their logs account for all.
    per_worker = [sent_per_worker(first), sent_per_worker(second)]
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(per_worker) == 2000, per_worker


# --- 2. the real anymail Postmark backend against the stub ---------------------------------


@pytest.fixture
def postmark() -> Iterator[PostmarkStub]:
    with PostmarkStub() as stub:
        yield stub


def posted_to(stub: PostmarkStub) -> Counter[str]:
    """How many requests the stub received for each recipient, parsed from the JSON "To"."""
    counts: Counter[str] = Counter()
    for body in stub.posted():
        addresses = [a.lower() for _n, a in getaddresses([str(body.get("To", ""))]) if a]
        assert len(addresses) == 1, body.get("To")
        assert not body.get("Cc") and not body.get("Bcc"), body
        counts[addresses[0]] += 1
    return counts


def test_postmark_outcomes_retry_only_what_was_refused_and_never_repost_unknowns(
    postmark: PostmarkStub,
    celery_workers: CeleryWorkers,
    olivia: User,
    rita: User,
    make_member: Callable[..., User],
    settings: Any,
) -> None:
    env = sending_settings(settings, env={**postmark.env(), "ANYMAIL_REQUESTS_TIMEOUT": "2"})
    members = [make_member(f"p{i:02d}@example.org", first_name="Pat") for i in range(20)]
    # One worker with one process: requests arrive in delivery order, so the n-th scripted
    # reply answers the n-th delivery. Afterwards every request gets a 200.
    postmark.script(
        Reply.ok(),
        Reply.rate_limited(),  # 429: not accepted, retried later
        Reply.server_error(),  # 500 after the request went out: unknown
        Reply.unavailable(),  # 503: not accepted, retried later
        Reply.invalid_address(members[4].email),  # 422/300: permanent
        Reply.hang(6),  # longer than the 2 s client timeout: unknown
    )
    worker = celery_workers(name="postmark", extra_env=env)

    campaign = approve_new_campaign(olivia, rita)
    open_statuses = (Delivery.Status.PENDING, Delivery.Status.CLAIMED, Delivery.Status.SENDING)
    wait_until(
        lambda: count_status(campaign, *open_statuses) == 0,
        timeout=60,
        what="every delivery to get a first outcome",
        diagnostics=lambda: explain(campaign, [worker]),
    )
    rows = list(Delivery.objects.filter(campaign=campaign).order_by("id"))
    expected_first = [
        Delivery.Status.SENT,
        Delivery.Status.RETRY_WAIT,
        Delivery.Status.UNKNOWN,
        Delivery.Status.RETRY_WAIT,
        Delivery.Status.FAILED,
        Delivery.Status.UNKNOWN,
    ] + [Delivery.Status.SENT] * 14
    assert [row.status for row in rows] == expected_first, [r.last_error for r in rows]
    assert [row.address for row in rows] == [m.email for m in members]
    now = timezone.now()
    for row in (rows[1], rows[3]):
        assert row.next_attempt_at is not None and row.next_attempt_at > now
        assert row.attempts == 1 and row.claim_token is None
    assert "429" in rows[1].last_error and "503" in rows[3].last_error
    assert Suppression.objects.filter(address=rows[4].address, reason="hard_bounce").exists()
    assert rows[0].provider_message_id and rows[0].message_id
    # Retries are still due, so the campaign is not finished.
    assert campaign_status(campaign) == Campaign.Status.SENDING

    # The chain's last send_batch (the one that finds nothing) may still be queued or
    # running; it would take the retries itself once they are due. Let it finish first.
    wait_until(
        lambda: worker_idle(celery_workers, worker),
        timeout=60,
        what="the worker to finish the chain's last batch",
        diagnostics=lambda: explain(campaign, [worker]),
    )
    # Make the retries due now (instead of waiting out the backoff) and let the sweeper
    # notice due work that nobody holds: it dispatches, the worker sends.
    Delivery.objects.filter(campaign=campaign, status=Delivery.Status.RETRY_WAIT).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert send_worker.sweep().redispatched == 1
    wait_until_sent(
        campaign,
        timeout=60,
        what="the retries to be sent",
        diagnostics=lambda: explain(campaign, [worker]),
    )
    worker.stop()

    final = {row.address: row for row in Delivery.objects.filter(campaign=campaign)}
    statuses = Counter(row.status for row in final.values())
    assert statuses == Counter({"sent": 17, "unknown": 2, "failed": 1})
    assert final[rows[1].address].status == Delivery.Status.SENT
    assert final[rows[3].address].status == Delivery.Status.SENT
    assert final[rows[1].address].attempts == final[rows[3].address].attempts == 2

    # Posted twice only where the first answer proved it was not accepted (429, 503);
    # the ambiguous ones (500, timeout) were never posted again.
    expected_posts = {m.email: 1 for m in members}
    expected_posts[rows[1].address] = expected_posts[rows[3].address] = 2
    assert posted_to(postmark) == Counter(expected_posts)
    assert {request.path for request in postmark.requests} == {"/email"}


# --- 3. a worker killed mid-campaign --------------------------------------------------------


def test_kill9_worker_mid_campaign(
    smtp_sink: SmtpSink,
    workers: CeleryWorkers,
    olivia: User,
    rita: User,
    settings: Any,
) -> None:
    lease = 30
    # Slow enough that the campaign is mid-way when the worker dies.
    env = sending_settings(settings, rate=30.0, burst=5, lease=lease, env=smtp_sink.env())
    make_audience(300)
    doomed = workers(name="doomed", extra_env=env)
    campaign = approve_new_campaign(olivia, rita)

    # Kill inside a batch: messages have left, and rows are still claimed by the victim.
    wait_until(
        lambda: (
            smtp_sink.count() >= 90
            and count_status(campaign, Delivery.Status.CLAIMED, Delivery.Status.SENDING) > 0
        ),
        timeout=60,
        what="the campaign to be a third of the way through a batch",
        diagnostics=lambda: explain(campaign, [doomed]),
        interval=0.05,
    )
    victims = doomed.kill9()
    assert doomed.returncode == -9 and len(victims) == 2  # the main process and its pool child
    stranded = count_status(campaign, Delivery.Status.CLAIMED, Delivery.Status.SENDING)
    assert stranded > 0
    sent_before = count_status(campaign, Delivery.Status.SENT)
    assert 0 < sent_before < 300

    # Nobody is alive to hold a lease, so sweep as if the leases had run out: claimed rows
    # never reached the transport and go back to pending; a row caught `sending` becomes
    # unknown (it may or may not have left). Due work that nobody holds is dispatched.
    result = send_worker.sweep(now=timezone.now() + timedelta(seconds=lease + 1))
    assert result.reclaimed + result.unknown == stranded
    assert result.redispatched == 1
    assert count_status(campaign, Delivery.Status.CLAIMED, Delivery.Status.SENDING) == 0

    successor = workers(name="successor", extra_env=env)
    wait_until_sent(
        campaign,
        timeout=90,
        what="the campaign to finish on the new worker",
        diagnostics=lambda: explain(campaign, [successor]),
        interval=0.5,
    )
    workers.stop_all()

    deliveries = list(Delivery.objects.filter(campaign=campaign))
    statuses = Counter(d.status for d in deliveries)
    assert set(statuses) <= {Delivery.Status.SENT, Delivery.Status.UNKNOWN}, statuses
    assert statuses[Delivery.Status.UNKNOWN] == result.unknown
    counts = smtp_sink.rcpt_counts()
    for delivery in deliveries:
        received = counts[delivery.address.lower()]
        if delivery.status == Delivery.Status.SENT:
            assert received == 1, f"{delivery.address} sent, received {received} times"
        else:
            # Unknown: the kill came between `sending` and the outcome. Never resent.
            assert received <= 1, f"{delivery.address} unknown, received {received} times"
    assert sum(counts.values()) == smtp_sink.count()
    # Everything sent after the crash was sent by the successor, and its log says so.
    assert sent_per_worker(successor) == statuses[Delivery.Status.SENT] - sent_before


# --- 4. the broker loses its messages mid-campaign -----------------------------------------


def _broker_loss_mid_campaign(
    lose_messages: Callable[[], int],
    *,
    sink: SmtpSink,
    workers: CeleryWorkers,
    author: User,
    reviewer: User,
    settings: Any,
) -> None:
    """`lose_messages()` empties the broker and returns how many task messages it held."""
    env = sending_settings(settings, rate=60.0, burst=5, env=sink.env())
    make_audience(300)
    first = workers(name="broker-loss-1", extra_env=env)
    campaign = approve_new_campaign(author, reviewer)
    redispatched = 0

    def sweep() -> None:
        # What beat runs every few seconds.
        nonlocal redispatched
        redispatched += send_worker.sweep().redispatched

    # 1. The broker loses what it holds while the worker is inside a batch: the batch in
    #    hand goes on, the queued one is gone, and the sweep covers any gap.
    assert sink.wait_for(60, timeout=60), explain(campaign, [first])
    assert lose_messages() > 0, "nothing was in the broker: the loss proved nothing"
    progress = sink.count() + 30
    wait_until(
        lambda: sink.count() >= progress,
        timeout=60,
        what="sending to go on after the broker lost its queue",
        diagnostics=lambda: explain(campaign, [first]),
        interval=0.5,
        every=sweep,
    )

    # 2. The broker loses everything while no worker runs (a deploy that also restarts
    #    Redis without persistence): not one message is left to carry the campaign on.
    first.stop()  # warm: the batch in hand finishes, queues its follow-up, gives claims back
    assert lose_messages() > 0, "the stopped worker left no follow-up: nothing was lost"
    second = workers(name="broker-loss-2", extra_env=env)
    stalled_at = sink.count()
    time.sleep(2.0)
    assert sink.count() == stalled_at, "something still carried the work on"
    assert count_status(campaign, Delivery.Status.CLAIMED, Delivery.Status.SENDING) == 0
    assert count_status(campaign, Delivery.Status.PENDING) > 0

    # 3. The sweeper finds due work that no live claim holds and dispatches it again.
    wait_until_sent(
        campaign,
        timeout=90,
        what="the sweeper to bring the campaign to its end",
        diagnostics=lambda: explain(campaign, [second]) + f"\nredispatched: {redispatched}",
        interval=1.0,
        every=sweep,
    )
    assert redispatched >= 1
    workers.stop_all()
    assert_each_sent_exactly_once(campaign, sink)


@pytest.mark.needs_redis
def test_redis_flush_mid_campaign(
    smtp_sink: SmtpSink, workers: CeleryWorkers, olivia: User, rita: User, settings: Any
) -> None:
    import redis

    if not django_settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        pytest.skip("the broker is not Redis")
    from config.celery import app

    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    queue = app.conf.task_default_queue

    def flush() -> int:
        # Queued task messages, and those delivered to a worker but not yet acknowledged
        # (acks_late): kombu keeps the latter in the "unacked" hash until the task ends.
        held = int(broker.llen(queue)) + int(broker.hlen("unacked"))
        # Only the broker's database: the rate limiter may live in another one.
        broker.flushdb()
        assert broker.dbsize() == 0
        return held

    _broker_loss_mid_campaign(
        flush, sink=smtp_sink, workers=workers, author=olivia, reviewer=rita, settings=settings
    )


def test_embedded_broker_queue_loss_mid_campaign(
    smtp_sink: SmtpSink, workers: CeleryWorkers, olivia: User, rita: User, settings: Any
) -> None:
    if not django_settings.CELERY_BROKER_URL.startswith("sqlite:///"):
        pytest.skip("the broker is not the embedded SQLite broker")
    broker_file = django_settings.CELERY_BROKER_URL.removeprefix("sqlite:///")

    def delete_queued_rows() -> int:
        # Messages waiting in the queue; kombu keeps consumed ones as invisible rows.
        with sqlite3.connect(broker_file, timeout=30) as broker:
            return broker.execute("DELETE FROM kombu_message WHERE visible = 1").rowcount

    _broker_loss_mid_campaign(
        delete_queued_rows,
        sink=smtp_sink,
        workers=workers,
        author=olivia,
        reviewer=rita,
        settings=settings,
    )


# --- 5. pause and resume across two workers ------------------------------------------------


def test_pause_stops_both_workers_and_resume_sends_the_rest_once(
    smtp_sink: SmtpSink,
    workers: CeleryWorkers,
    olivia: User,
    rita: User,
    settings: Any,
) -> None:
    env = sending_settings(settings, rate=40.0, burst=5, batch=100, env=smtp_sink.env())
    make_audience(400)
    first = workers(name="pause-1", extra_env=env, ready_timeout=None)
    second = workers(name="pause-2", extra_env=env, ready_timeout=None)
    first.wait_ready()
    second.wait_ready()
    campaign = approve_new_campaign(olivia, rita)
    assert smtp_sink.wait_for(80, timeout=60), explain(campaign, [first, second])

    services.pause_campaign(campaign, by=rita, reason="checking a complaint")
    at_pause = smtp_sink.count()
    # Quiet means no new message for 1.5 s; the deadline is generous for a busy machine.
    stopped = wait_until_quiet(smtp_sink, quiet_for=1.5, timeout=30)
    # Each worker re-reads the campaign at least every SEND_STATE_RECHECK_SECONDS (0.25 s)
    # before a message. "Every worker stops within a second": at the shared rate of 40/s
    # that is at most 40 messages plus the burst of 5 for both together. Workers that
    # only looked once per batch (batch=100) would send the rest of their claims, over 100.
    assert stopped - at_pause <= 40 * 1 + 5, (at_pause, stopped)
    # Both batches stopped and gave their unsent claims back.
    wait_until(
        lambda: count_status(campaign, Delivery.Status.CLAIMED, Delivery.Status.SENDING) == 0,
        timeout=10,
        what="the paused workers to release their claims",
        diagnostics=lambda: explain(campaign, [first, second]),
    )
    paused = send_worker.delivery_summary(campaign.pk)
    assert set(paused) == {Delivery.Status.SENT, Delivery.Status.PENDING}, paused
    assert paused[Delivery.Status.SENT] == smtp_sink.count()
    assert campaign_status(campaign) == Campaign.Status.PAUSED

    services.resume_campaign(campaign, by=olivia)
    wait_until_sent(
        campaign,
        timeout=90,
        what="the resumed campaign to finish",
        diagnostics=lambda: explain(campaign, [first, second]),
        interval=0.5,
    )
    workers.stop_all()
    assert_each_sent_exactly_once(campaign, smtp_sink)
    assert sent_per_worker(first) > 0 and sent_per_worker(second) > 0
    # Both workers drew from one shared bucket: in any 4 s, at most 4 x 40 plus the burst
    # of 5 for the two of them together (two private buckets would allow twice that).
    # A long window, so the jitter of arrival times (2 spare) is small beside it.
    assert smtp_sink.max_in_window(4.0) <= 4 * 40 + 5 + 2
