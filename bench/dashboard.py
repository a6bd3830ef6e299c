"""Benchmark of the dashboard's reads at a million deliveries: the campaign page, progress
and the per-recipient table's address search.

    DATABASE_URL=postgres://countersign@127.0.0.1:5432/countersign_dash \\
        .venv/bin/python bench/dashboard.py [--deliveries 1000000] [--seconds 15] [--clients 1,2,4]

Needs PostgreSQL (the database is migrated and gets a campaign of --deliveries rows once;
later runs reuse it). Starts gunicorn on loopback (2 sync workers, DEBUG off), logs a
Compliance reviewer in, and drives each URL from N keep-alive HTTP clients (closed loop:
each sends its next request when the last is answered) for --seconds, for each N in
--clients (2 = as many clients as server workers; 4 = twice as many, so requests queue),
while a writer moves deliveries from pending to sent at about 100 a second
(so the counter triggers and the readers' folding run as in a real send). Prints
p50/p95/p99 per URL, against two baselines measured in the same run:

- /healthz through the same server: the floor that HTTP, gunicorn and Django add;
- the GROUP BY status over the ledger (what the page ran before the counters), in process.

The recipient table is searched without an "@" (a substring of the address) for a rare
term (one address, the last one inserted, so an id-ordered walk reads the whole campaign
before finding it), a common one (every address), one that matches nothing, and a whole
address (a search with an "@").

It also prints each page's service time in process (Django's test client, one request
at a time, no HTTP): what a request costs the server before any queueing for a core.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
CAMPAIGN_NAME = "bench-dashboard"
SECRET = "bench-only-" + "x" * 40
SERVER_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": SECRET,
    "SECURE_SSL_REDIRECT": "false",
    "SESSION_COOKIE_SECURE": "false",
    "CSRF_COOKIE_SECURE": "false",
    "STATICFILES_MANIFEST": "false",
    "ALLOWED_HOSTS": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
}


def prepare_environment() -> None:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("bench/dashboard.py needs DATABASE_URL (or BENCH_DATABASE_URL) naming PostgreSQL")
    os.environ["DATABASE_URL"] = url
    sys.path.insert(0, str(ROOT))
    from bench.database import ensure_database

    ensure_database(url)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["VAR_DIR"] = str(BENCH_DIR)
    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)


def ensure_campaign(size: int) -> int:
    """A campaign in `sending` with `size` deliveries (60 % sent, a few failed, the rest
    pending), made with set-based SQL: the ORM would take minutes for a million rows."""
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from campaigns import services
    from campaigns.models import Campaign, Delivery
    from tests.factories import make_campaign

    def staff(name: str, role: str) -> User:
        user, _ = User.objects.get_or_create(
            username=name, defaults={"email": f"{name}@example.com", "is_staff": True}
        )
        user.groups.add(Group.objects.get(name=role))
        return user

    author = staff("bench-olivia", "Ops")
    staff("bench-rita", "Compliance")
    campaign = Campaign.objects.filter(name=CAMPAIGN_NAME).first()
    if campaign is not None and Delivery.objects.filter(campaign=campaign).count() == size:
        return campaign.pk
    if campaign is not None:
        sys.exit(f"{CAMPAIGN_NAME} exists with another size: drop the database or use that size")
    campaign = make_campaign(author, name=CAMPAIGN_NAME)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name,
              is_staff, is_active, date_joined, email, locale, attributes, seed_addresses,
              time_zone, password_owner_only)
            SELECT '!', false, 'bench-' || i, 'Member', 'N' || i, false, true, now(),
                   'bench-' || i || '@example.org', 'en', '{}', '', '', false
            FROM generate_series(1, %s) AS i
            ON CONFLICT DO NOTHING
            """,
            [size],
        )
        cursor.execute(
            """
            INSERT INTO campaigns_delivery (campaign_id, user_id, address, recipient_data, status,
              attempts, last_error, message_id, provider_message_id, created_at, updated_at)
            SELECT %s, id, email, jsonb_build_object('first_name', first_name), 'pending', 0,
                   '', '', '', now(), now()
            FROM accounts_user WHERE username LIKE 'bench-%%' AND NOT is_staff
            ORDER BY id LIMIT %s
            """,
            [campaign.pk, size],
        )
        # One statement each: the statement-level triggers count them in one go.
        cursor.execute(
            "UPDATE campaigns_delivery SET status = 'sent', sent_at = now(), attempts = 1"
            " WHERE campaign_id = %s AND id %% 10 < 6",
            [campaign.pk],
        )
        cursor.execute(
            "UPDATE campaigns_delivery SET status = 'failed', attempts = 1"
            " WHERE campaign_id = %s AND id %% 1000 = 999",
            [campaign.pk],
        )
        cursor.execute("ANALYZE campaigns_delivery")
    Campaign.objects.filter(pk=campaign.pk).update(
        status=Campaign.Status.SENDING,
        recipient_count=size,
        frozen_digest="b" * 64,
        approved_digest="b" * 64,
        audience_hash="c" * 64,
        submitted_by=author,
        submitted_at=timezone.now(),
        sending_started_at=timezone.now(),
    )
    del services
    print(f"made {size:,} deliveries in {time.perf_counter() - started:.0f} s")
    return campaign.pk


# Search terms for the per-recipient table (addresses are bench-<n>@example.org).
SEARCHES = (
    ("recipients, rare search", "999999"),
    ("recipients, common search", "example"),
    ("recipients, search with no match", "nobody"),
    ("recipients, exact address", "bench-500000@example.org"),
)


def search_paths(campaign_id: int) -> list[tuple[str, str]]:
    from urllib.parse import urlencode

    from django.urls import reverse

    base = reverse("admin:campaigns_campaign_deliveries", args=[campaign_id])
    return [(label, f"{base}?{urlencode({'q': term})}") for label, term in SEARCHES]


def session_cookie(username: str) -> str:
    from django.conf import settings
    from django.test import Client

    from accounts.models import User

    client = Client()
    client.force_login(User.objects.get(username=username))
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **SERVER_ENV}
    server = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("gunicorn did not answer /healthz within 60 s")


def drive(port: int, path: str, cookie: str, seconds: float, clients: int) -> list[float]:
    """Latencies (ms) of GET path from `clients` keep-alive connections for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            conn.request("GET", path, headers={"Cookie": cookie, "Host": "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if response.status != 200:
                errors.append(f"{path}: HTTP {response.status}")
                break
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(errors[0])
    return latencies


def writer(campaign_id: int, stop: threading.Event, moved: list[int]) -> None:
    """Move one pending delivery to sent about every 10 ms, in its own transaction."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        while not stop.is_set():
            conn.execute(
                "UPDATE campaigns_delivery SET status = 'sent', sent_at = now()"
                " WHERE id = (SELECT id FROM campaigns_delivery WHERE campaign_id = %s"
                " AND status = 'pending' LIMIT 1)",
                [campaign_id],
            )
            moved[0] += 1
            time.sleep(0.01)


def service_times(
    campaign_id: int, requests: int, *, search_requests: int, search_only: bool
) -> list[tuple[str, list[float]]]:
    from django.test import Client
    from django.urls import reverse

    from accounts.models import User

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.get(username="bench-rita"))
    results = []
    pages = [
        (label, reverse(name, args=[campaign_id]), requests)
        for label, name in (
            ("progress endpoint", "admin:campaigns_campaign_progress"),
            ("campaign page", "admin:campaigns_campaign_change"),
        )
    ]
    # Fewer searches: before the index a rare term costs a scan of the ledger each.
    searches = [(label, path, search_requests) for label, path in search_paths(campaign_id)]
    for label, path, count in searches if search_only else pages + searches:
        client.get(path)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        results.append((label + " (in process)", times))
    return results


def percentiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="only the recipient-table searches (and the /healthz baseline)",
    )
    args = parser.parse_args()
    prepare_environment()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.urls import reverse

    from campaigns.worker import delivery_summary

    call_command("migrate", verbosity=0)
    campaign_id = ensure_campaign(args.deliveries)
    cookie = session_cookie("bench-rita")

    # Baseline in process: the ledger scan the page used to run per request.
    scans = []
    for _ in range(5):
        t0 = time.perf_counter()
        delivery_summary(campaign_id)
        scans.append((time.perf_counter() - t0) * 1000)
    # Service time without HTTP, gunicorn or client contention: the Django test client,
    # one request at a time (what each request costs the server, before any queueing).
    in_process = service_times(
        campaign_id, requests=200, search_requests=20, search_only=args.search_only
    )
    connection.close()

    port = free_port()
    server = start_server(port)
    stop = threading.Event()
    moved = [0]
    background = threading.Thread(target=writer, args=(campaign_id, stop, moved))
    background.start()
    rows: list[tuple[int, str, list[float]]] = []
    levels = [int(n) for n in args.clients.split(",")]
    try:
        urls = [
            ("/healthz (baseline: the stack)", "/healthz"),
            (
                "progress endpoint",
                reverse("admin:campaigns_campaign_progress", args=[campaign_id]),
            ),
            ("campaign page", reverse("admin:campaigns_campaign_change", args=[campaign_id])),
            ("home page", reverse("admin:index")),
            ("campaign list", reverse("admin:campaigns_campaign_changelist")),
        ]
        if args.search_only:
            urls = urls[:1]
        urls += search_paths(campaign_id)
        for clients in levels:
            for label, path in urls:
                drive(port, path, cookie, 2.0, clients)  # warm-up
                rows.append((clients, label, drive(port, path, cookie, args.seconds, clients)))
    finally:
        stop.set()
        background.join()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    print(
        f"\n{args.deliveries:,} deliveries on PostgreSQL; keep-alive clients on loopback, "
        f"{args.seconds:.0f} s per URL and client count; gunicorn with 2 sync workers on "
        f"{os.cpu_count()} cores; a writer moved {moved[0]:,} deliveries to sent meanwhile\n"
    )
    print(f"{'clients':>7}  {'what':<48} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for clients, label, values in rows:
        p50, p95, p99 = percentiles(values)
        print(f"{clients:>7}  {label:<48} {len(values):>8} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}")
    for label, values in in_process:
        p50, p95, p99 = percentiles(values)
        print(f"{'-':>7}  {label:<48} {len(values):>8} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}")
    print(
        f"{'':>7}  {'GROUP BY over the ledger (before)':<48} {len(scans):>8} "
        f"{statistics.median(scans):>8.1f} {max(scans):>8.1f} {'':>8}  (in process, no HTTP)"
    )


if __name__ == "__main__":
    main()
