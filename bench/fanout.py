"""Fan-out benchmark: approval to the last delivery recorded, against two baselines, one run.

    make bench-fanout                      # installs postfix's smtp-sink if missing, N=20,000
    .venv/bin/python bench/fanout.py --n 2000 --rounds 3

Variants, alternated round by round on the same sink and the same messages (the bytes
`campaigns.rendering.build_message` makes for each recipient):

- bare-1 / bare-2: render, build, serialize and send every message over one reused SMTP
  connection per process (Django's SMTP backend, no guard), no database (a wrapper
  refuses every query once the loop starts), no broker; one process, then two.
- post-office: django-post-office (PyPI, `bench/requirements.txt`) with its Celery
  integration: `mail.send_many` of per-recipient messages (already rendered, so its
  timing leaves out rendering), its worker `-c 2` sends them; from `send_many` to the last
  `Email` marked sent.
- countersign: `approve_campaign` (the audience was frozen at submit, before the clock
  starts) to the last `Delivery` marked sent, `celery -A config worker -c 2`, PostgreSQL
  + Redis, the shared rate limiter set out of the way.

Every message is verified at the sink: exactly one RCPT TO, equal to the To header's
address, and the distinct recipients are exactly the N audience addresses.
CPU per message is user+system time of the sending processes (worker pools included)
divided by N.

Needs PostgreSQL and Redis: DATABASE_URL (default the bench database below, whose public
schema is dropped and re-created), CELERY_BROKER_URL and REDIS_URL (dbs 8 and 9 by
default; only those two are flushed). The sink is postfix's C `smtp-sink` on a loopback
port (postfix's own MTA is never started), or tests/smtp_sink.py (aiosmtpd) with
`--sink aiosmtpd`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_DATABASE = "postgres://countersign@127.0.0.1:5432/countersign_speed"
DEFAULT_BROKER = "redis://127.0.0.1:6379/8"
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
FIRST_NAMES = ("Smith, John", 'Jane "JJ"', "Zoë", "山田 太郎", "Ann", "Łukasz", "O'Brien (work)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE)
    env.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    env.setdefault("REDIS_URL", DEFAULT_REDIS)
    env.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(16))
    env.setdefault("AUDIT_ANCHOR_KEY", "bench-" + secrets.token_hex(32))
    env.setdefault("DEBUG", "false")
    env.setdefault("LOG_LEVEL", "WARNING")
    env["DJANGO_SETTINGS_MODULE"] = env.get("BENCH_SETTINGS", "config.settings")
    env["PYTHONPATH"] = str(ROOT)
    # The rate limiter out of the way: this measures the sender, not the limit.
    env["SEND_RATE_PER_SECOND"] = "1000000"
    env["SEND_BURST"] = "1000000"
    env["EMAIL_TRANSPORT"] = "campaigns.smtp.SMTPTransport"
    env.update(extra)
    return env


def setup_django(settings_module: str = "config.settings") -> None:
    for key, value in base_env().items():
        os.environ.setdefault(key, value)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    sys.path.insert(0, str(ROOT))
    from bench.database import ensure_database

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()


# --- The sink -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    rcpts: list[str]
    to: list[str]


class Sink:
    """postfix's smtp-sink dumping each transaction to a file, or the aiosmtpd sink."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.dump: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._aiosmtpd: Any = None

    def start(self, label: str) -> None:
        if self.kind == "smtp-sink":
            self.dump = self.workdir / f"sink-{label}"
            self.dump.mkdir(parents=True)
            os.chmod(self.dump, 0o777)  # smtp-sink drops privileges to -u when run as root
            argv = ["smtp-sink", "-d", f"{self.dump}/%H%M%S.", f"127.0.0.1:{self.port}", "512"]
            if os.geteuid() == 0:
                argv[1:1] = ["-u", "nobody"]
            self._proc = subprocess.Popen(argv, start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
                time.sleep(0.05)
            raise RuntimeError("smtp-sink did not start")
        from tests.smtp_sink import SmtpSink

        self._aiosmtpd = SmtpSink()
        self._aiosmtpd.__enter__()
        self.port = int(self._aiosmtpd.port)

    def stop(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(10)
            self._proc = None
        if self._aiosmtpd is not None:
            self._aiosmtpd.__exit__(None, None, None)

    def count(self) -> int:
        if self.dump is not None:
            return sum(1 for _ in self.dump.iterdir())
        return len(self._aiosmtpd.messages())

    def received(self) -> Iterator[Received]:
        parser = BytesHeaderParser(policy=default_policy)
        if self.dump is not None:
            for path in self.dump.iterdir():
                raw = path.read_bytes()
                prefix, _, rest = raw.partition(b"\nReceived: ")
                rcpts = [
                    line.split(b":", 1)[1].strip().strip(b"<>").decode()
                    for line in prefix.splitlines()
                    if line.startswith(b"X-Rcpt-Args:")
                ]
                # smtp-sink puts its own Received header first; the message follows it.
                headers = parser.parsebytes(b"Received: " + rest)
                yield Received(rcpts, [a.addr_spec for a in headers["To"].addresses])
            return
        for message in self._aiosmtpd.messages():
            headers = parser.parsebytes(message.data)
            yield Received(list(message.rcpt_tos), [a.addr_spec for a in headers["To"].addresses])

    def verify(self, expected: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < len(expected) and time.monotonic() < deadline:
            time.sleep(0.1)
        seen: set[str] = set()
        total = 0
        for message in self.received():
            total += 1
            if len(message.rcpts) != 1 or len(message.to) != 1:
                raise AssertionError(f"not one recipient: {message}")
            if message.rcpts[0].lower() != message.to[0].lower():
                raise AssertionError(f"RCPT differs from To: {message}")
            seen.add(message.rcpts[0].lower())
        if total != len(expected) or seen != expected:
            raise AssertionError(
                f"sink holds {total} messages for {len(seen)} distinct recipients; "
                f"expected {len(expected)}, missing {len(expected - seen)}, "
                f"foreign {len(seen - expected)}"
            )


# --- CPU of a process group -------------------------------------------------------------


def group_cpu_seconds(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class Worker:
    """`celery -A config worker -c K` (2 by default) in its own process group (only this
    group is ever ended)."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        celery = str(Path(PYTHON).with_name("celery"))
        argv = [celery, "-A", "config", "worker", "-c", str(concurrency), "-P", "prefork"]
        argv += ["-l", "WARNING"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.log = log
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Wait until both pool processes exist and the consumer is ready.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            members = [
                e
                for e in os.listdir("/proc")
                if e.isdigit() and _pgid(int(e)) == self.proc.pid and int(e) != self.proc.pid
            ]
            if len(members) >= concurrency:
                time.sleep(1.5)  # the consumer connects after the pool is forked
                return
            time.sleep(0.1)
        raise RuntimeError("worker did not start")

    def cpu(self) -> float:
        return group_cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        """The largest resident set of the worker's processes right now, in MB."""
        largest = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _pgid(int(entry)) == self.proc.pid:
                try:
                    status = Path(f"/proc/{entry}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]))
        return largest / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def _pgid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[2])


def flush_redis(env: dict[str, str]) -> None:
    import redis

    for url in (env["CELERY_BROKER_URL"], env["REDIS_URL"]):
        if url.startswith("redis://"):
            redis.Redis.from_url(url).flushdb()  # only dbs 8 and 9 (or what you named)


# --- Database setup (parent process) -----------------------------------------------------


def reset_database(n: int) -> None:
    """Drop and re-create the public schema, migrate, create N audience members."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT,
        env=base_env(),
        check=True,
    )
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "-v", "0", "post_office"],
        cwd=ROOT,
        env=base_env(DJANGO_SETTINGS_MODULE="bench.postoffice_settings"),
        check=False,
    )
    from django.contrib.auth.models import Group

    from accounts.models import User

    def staff(username: str, role: str) -> None:
        user = User.objects.create_user(
            username=username, email=f"{username}@example.com", password=None, is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))

    staff("olivia", "Ops")
    staff("rita", "Compliance")
    for start in range(0, n, 5000):
        User.objects.bulk_create(
            [
                User(
                    username=f"m{i:07d}@example.org",
                    email=f"m{i:07d}@example.org",
                    first_name=FIRST_NAMES[i % len(FIRST_NAMES)],
                    last_name=f"Nr {i}",
                    password="!",
                )
                for i in range(start, min(n, start + 5000))
            ]
        )


def submitted_campaign() -> Any:
    from accounts.models import User
    from campaigns import services
    from tests.factories import make_campaign

    author = User.objects.get(username="olivia")
    return services.submit_for_review(make_campaign(author), by=author)


# --- Variants ---------------------------------------------------------------------------------


@dataclass
class Run:
    variant: str
    seconds: float
    cpu: float
    n: int
    # Countersign only: the largest worker RSS (MB) sampled after the first 10% of the
    # messages were recorded, and over the whole run.
    rss_early: float = 0.0
    rss_peak: float = 0.0
    # Busy CPU seconds of the whole machine over the timed part (every process: the
    # database, Redis, the sink and the kernel included).
    machine: float = 0.0

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def run_countersign(n: int, sink: Sink, workdir: Path, label: str, *, concurrency: int = 2) -> Run:
    from accounts.models import User
    from campaigns import services
    from campaigns.models import Campaign, Delivery
    from campaigns.worker import delivery_summary

    campaign = submitted_campaign()
    env = base_env(EMAIL_HOST="127.0.0.1", EMAIL_PORT=str(sink.port))
    flush_redis(env)
    worker = Worker(env, workdir / f"worker-{label}.log", concurrency)
    try:
        cpu_before = worker.cpu()
        machine_before = machine_busy()
        started = time.time()
        services.approve_campaign(
            campaign, by=User.objects.get(username="rita"), digest=campaign.frozen_digest
        )
        deadline = time.monotonic() + max(600, n / 5)
        rss_early = rss_peak = 0.0
        while time.monotonic() < deadline:
            campaign.refresh_from_db(fields=["status"])
            if campaign.status != Campaign.Status.SENDING:
                break
            rss = worker.rss_mb()
            rss_peak = max(rss_peak, rss)
            if not rss_early and count_sent(campaign.pk) >= n // 10:
                rss_early = rss
            time.sleep(0.2)
        cpu = worker.cpu() - cpu_before
        machine = machine_busy() - machine_before
    finally:
        worker.stop()
    summary = delivery_summary(campaign.pk)
    if summary != {"sent": n} or campaign.status != Campaign.Status.SENT:
        raise AssertionError(f"countersign run ended {campaign.status}: {summary}")
    last = max(
        sent_at.timestamp()
        for sent_at in Delivery.objects.filter(campaign=campaign).values_list("sent_at", flat=True)
        if sent_at is not None
    )
    return Run("countersign", last - started, cpu, n, rss_early, rss_peak, machine)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def count_sent(campaign_id: int) -> int:
    from campaigns.models import Delivery

    return Delivery.objects.filter(campaign_id=campaign_id, status=Delivery.Status.SENT).count()


def run_bare(
    n: int, sink: Sink, workdir: Path, label: str, *, processes: int, prebuilt: bool = False
) -> Run:
    env = base_env(
        EMAIL_HOST="127.0.0.1", EMAIL_PORT=str(sink.port), BENCH_PREBUILT=str(int(prebuilt))
    )
    children = [
        subprocess.Popen(
            [PYTHON, __file__, "--bare-child", str(index), str(processes)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for index in range(processes)
    ]
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("a bare-loop child failed to start")
    machine_before = machine_busy()
    started = time.time()
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=3600)
        reports.append(json.loads(out))
        if child.returncode:
            raise RuntimeError("a bare-loop child failed")
    machine = machine_busy() - machine_before
    sent = sum(r["sent"] for r in reports)
    assert sent == n, sent
    end = max(r["end"] for r in reports)
    kind = "wire" if prebuilt else "bare"
    cpu = sum(r["cpu"] for r in reports)
    return Run(f"{kind}-{processes}", end - started, cpu, n, machine=machine)


def bare_child(index: int, processes: int) -> None:
    """One bare-loop process: its share of the deliveries, Django's SMTP backend, no database.

    With BENCH_PREBUILT=1 (the wire-K variants) every message's bytes are made before the
    clock starts and the loop only hands them to smtplib: what the machine and the sink
    can take at all, whoever builds the messages.
    """
    setup_django()
    from django.core.mail.backends.smtp import EmailBackend
    from django.db import connection
    from django.utils import timezone

    from campaigns.models import Campaign, Delivery
    from campaigns.rendering import build_message, recipient_for_delivery, render_eml

    campaign = Campaign.objects.select_related("sender").order_by("-id").first()
    assert campaign is not None
    recipients = [
        recipient_for_delivery(d)
        for d in Delivery.objects.filter(campaign=campaign).order_by("id")[index::processes]
    ]
    # Load everything the builder reads once, before the loop (compiled templates too).
    build_message(campaign, recipients[0], send_time=timezone.now())

    def no_database(*args: Any) -> None:
        raise AssertionError("the bare loop touched the database")

    prebuilt: list[tuple[str, list[str], bytes]] = []
    if os.environ.get("BENCH_PREBUILT") == "1":
        for recipient in recipients:
            message = build_message(campaign, recipient, send_time=timezone.now())
            prebuilt.append((message.from_email, [recipient.address], render_eml(message)))

    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    smtp = EmailBackend()
    sent = 0
    with connection.execute_wrapper(no_database), smtp:
        if prebuilt:
            assert smtp.connection is not None
            for from_email, rcpt, raw in prebuilt:
                smtp.connection.sendmail(from_email, rcpt, raw)
                sent += 1
        else:
            for recipient in recipients:
                message = build_message(campaign, recipient, send_time=timezone.now())
                sent += smtp.send_messages([message])
    end = time.time()
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu_before
    print(json.dumps({"sent": sent, "end": end, "cpu": cpu}), flush=True)


def run_post_office(n: int, sink: Sink, workdir: Path, label: str) -> Run:
    env = base_env(
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(sink.port),
        DJANGO_SETTINGS_MODULE="bench.postoffice_settings",
        BENCH_SETTINGS="bench.postoffice_settings",
    )
    flush_redis(env)
    worker = Worker(env, workdir / f"postoffice-{label}.log")
    try:
        child = subprocess.Popen(
            [PYTHON, __file__, "--postoffice-child", str(n)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("the post-office child failed to start")
        cpu_before = worker.cpu()
        machine_before = machine_busy()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=3600)
        cpu = worker.cpu() - cpu_before
        machine = machine_busy() - machine_before
    finally:
        worker.stop()
    report = json.loads(out)
    if report["sent"] != n:
        raise AssertionError(f"post-office sent {report['sent']} of {n}: {report}")
    return Run("post-office", report["end"] - report["start"], cpu, n, machine=machine)


def postoffice_child(n: int) -> None:
    setup_django("bench.postoffice_settings")
    from django.db import connection
    from django.utils import timezone
    from post_office import mail  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from post_office.models import STATUS, Email  # type: ignore[import-untyped,import-not-found,unused-ignore]

    from campaigns.models import Campaign, Delivery
    from campaigns.rendering import build_message, recipient_for_delivery

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE post_office_email CASCADE")
    campaign = Campaign.objects.select_related("sender").order_by("-id").first()
    assert campaign is not None
    now = timezone.now()
    kwargs_list = []
    for delivery in Delivery.objects.filter(campaign=campaign).order_by("id"):
        message = build_message(campaign, recipient_for_delivery(delivery), send_time=now)
        kwargs_list.append(
            {
                "sender": message.from_email,
                "recipients": message.to,
                "subject": message.subject,
                "message": message.body,
                "html_message": message.alternatives[0][0],
                "headers": {**message.extra_headers, "Reply-To": message.reply_to[0]},
            }
        )
    assert len(kwargs_list) == n
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    mail.send_many(kwargs_list)
    deadline = time.monotonic() + max(600, n / 5)
    while time.monotonic() < deadline:
        if not Email.objects.filter(status__in=[STATUS.queued, STATUS.requeued]).exists():
            break
        time.sleep(0.2)
    sent = Email.objects.filter(status=STATUS.sent).count()
    end = max(Email.objects.values_list("last_updated", flat=True)).timestamp()
    print(json.dumps({"sent": sent, "start": start, "end": end}), flush=True)


# --- The run ---------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    run: Callable[[int, Sink, Path, str], Run]
    runs: list[Run] = field(default_factory=list)


def post_office_available() -> str:
    try:
        import post_office  # type: ignore[import-untyped,import-not-found,unused-ignore] # noqa: F401
    except ImportError:
        return "django-post-office is not installed (pip install -r bench/requirements.txt)"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sink", choices=["smtp-sink", "aiosmtpd"], default=None)
    parser.add_argument(
        "--variants",
        default="bare-1,bare-2,post-office,countersign",
        help="comma-separated; also bare-K (K processes), countersign-K (a worker with K pool "
        "processes; countersign is -c 2) and wire-K (K processes sending bytes made before "
        "the clock starts: what the machine and sink can take at all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--bare-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--postoffice-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        bare_child(*args.bare_child)
        return
    if args.postoffice_child:
        postoffice_child(args.postoffice_child)
        return

    sink_kind = args.sink or ("smtp-sink" if shutil.which("smtp-sink") else "aiosmtpd")
    # The approval mails the author: keep that out of the sink (it is not a delivery).
    os.environ["EMAIL_TRANSPORT"] = "django.core.mail.backends.locmem.EmailBackend"
    setup_django()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench/fanout.py needs PostgreSQL (DATABASE_URL)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    os.chmod(workdir, 0o755)  # smtp-sink runs as nobody and writes below it
    wanted = args.variants.split(",")
    variants = []
    notes = []
    for name in wanted:
        kind, _, count = name.partition("-")
        if kind in ("bare", "wire") and count.isdigit():
            variants.append(
                Variant(name, partial(run_bare, processes=int(count), prebuilt=kind == "wire"))
            )
        elif name == "post-office":
            why = post_office_available()
            if why:
                notes.append(f"post-office skipped: {why}")
            else:
                variants.append(Variant(name, run_post_office))
        elif name == "countersign":
            variants.append(Variant(name, run_countersign))
        elif kind == "countersign" and count.isdigit():
            variants.append(Variant(name, partial(run_countersign, concurrency=int(count))))
    print(f"fan-out bench: N={args.n}, {args.rounds} rounds, sink {sink_kind}, work {workdir}")
    reset_database(args.n)
    from accounts.models import User

    expected = {
        e.lower() for e in User.objects.filter(is_staff=False).values_list("email", flat=True)
    }
    assert len(expected) == args.n
    try:
        for round_no in range(1, args.rounds + 1):
            order = variants if round_no % 2 else list(reversed(variants))
            for variant in order:
                if not variant.name.startswith("countersign"):
                    # The baselines send the newest campaign's frozen deliveries.
                    submitted_campaign()
                label = f"{variant.name}-{round_no}"
                sink = Sink(sink_kind, workdir)
                sink.start(label)
                try:
                    run = variant.run(args.n, sink, workdir, label)
                    sink.verify(expected)
                finally:
                    sink.stop()
                    if sink.dump is not None and not args.keep:
                        shutil.rmtree(sink.dump, ignore_errors=True)
                variant.runs.append(run)
                print(
                    f"  round {round_no} {variant.name:<12} {run.rate:8.0f} msg/s "
                    f"{1000 * run.cpu / run.n:6.2f} ms CPU/msg "
                    f"{1000 * run.machine / run.n:6.2f} ms machine CPU/msg  (sink verified)",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(variants, args.n, notes)


def print_table(variants: list[Variant], n: int, notes: list[str]) -> None:
    medians = {v.name: statistics.median(r.rate for r in v.runs) for v in variants if v.runs}
    print()
    print(
        f"| variant (N = {n:,}) | median msg/s | min–max | CPU per message "
        "| machine CPU per message |"
    )
    print("|---|---:|---:|---:|---:|")
    for v in variants:
        if not v.runs:
            continue
        rates = [r.rate for r in v.runs]
        cpu = statistics.median(1000 * r.cpu / r.n for r in v.runs)
        machine = statistics.median(1000 * r.machine / r.n for r in v.runs)
        print(
            f"| {v.name} | {medians[v.name]:,.0f} | {min(rates):,.0f}–{max(rates):,.0f} "
            f"| {cpu:.2f} ms | {machine:.2f} ms |"
        )
    for v in variants:
        if v.name.startswith("countersign") and v.runs:
            early = max(r.rss_early for r in v.runs)
            peak = max(r.rss_peak for r in v.runs)
            print(
                f"{v.name} worker RSS (largest process, sampled every 0.2 s): "
                f"{early:.0f} MB after the first 10% of messages, {peak:.0f} MB peak"
            )
    if "countersign" in medians:
        for base in ("bare-2", "bare-1", "post-office"):
            if base in medians:
                print(f"countersign / {base}: {medians['countersign'] / medians[base]:.2f}x")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
