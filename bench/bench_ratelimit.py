"""Benchmark of the shared rate limiter (campaigns/ratelimit.py): speed, and is it shared?

    .venv/bin/python bench/bench_ratelimit.py [--seconds 10] [--rate 50] [--burst 10]

Two measurements, for the Redis bucket and for the database bucket:

- baseline: one process taking tokens as fast as it can from a bucket whose rate is so
  high that it never waits: the cost of one `try_take` (tokens per second);
- shared: two processes (multiprocessing, each with its own Django setup and connections,
  as two workers would be) take from ONE bucket at `--rate` per second for `--seconds`
  each, starting together. The combined rate must be the configured one (plus the initial
  burst), not twice it; the split shows whether one process starves the other.

Redis: db 10 of REDIS_URL's server (or BENCH_REDIS_URL), under keys of its own that it
deletes again. Database: a throwaway SQLite file in a temporary folder, or, with
--database-url postgres://..., a throwaway `test_<name>` database created and dropped the
way the test runner does it. Never the configured database.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def prepare_environment(workdir: Path, database_url: str) -> None:
    # Set before django.setup(): settings read them once, at import.
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["VAR_DIR"] = str(workdir)
    os.environ["CELERY_BROKER_URL"] = f"sqlite:///{workdir / 'broker.sqlite3'}"
    os.environ["REDIS_URL"] = ""
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    if not os.environ.get("SECRET_KEY"):
        os.environ["DEBUG"] = "true"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def redis_url_db10() -> str:
    explicit = os.environ.get("BENCH_REDIS_URL")
    if explicit:
        return explicit
    base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/10", "", ""))


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def make_bucket(backend: str, key: str, *, rate: float, burst: int, redis_url: str) -> Any:
    from campaigns.ratelimit import DatabaseBucket, RedisBucket

    if backend == "redis":
        return RedisBucket(key, url=redis_url, rate=rate, burst=burst)
    return DatabaseBucket(key, rate=rate, burst=burst)


def child_database_url(test_name: str) -> str:
    """DATABASE_URL naming the throwaway database the parent created."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return "sqlite:///" + str(Path(test_name).resolve())
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or ''}{port}/{quote(test_name, safe='')}"


# --- the two processes ----------------------------------------------------------------------


def taker(
    env: dict[str, str],
    backend: str,
    key: str,
    rate: float,
    burst: int,
    redis_url: str,
    start_at: float,
    seconds: float,
    results: Any,
) -> None:
    """One process: set up Django, wait for the common start, take tokens until the end."""
    os.environ.update(env)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    bucket = make_bucket(backend, key, rate=rate, burst=burst, redis_url=redis_url)
    late = time.time() - start_at
    if late < 0:
        time.sleep(-late)
    stamps: list[float] = []
    end = start_at + seconds
    while time.time() < end:
        wait = bucket.try_take()
        if wait <= 0:
            stamps.append(time.time())
        else:
            # Sleep as take() would, but never past the end of the run.
            time.sleep(min(wait, max(0.0, end - time.time())))
    results.put((os.getpid(), max(0.0, late), stamps))


@dataclass
class SharedResult:
    backend: str
    rate: float
    burst: int
    seconds: float
    per_process: list[int]
    stamps: list[float]
    late: float

    @property
    def total(self) -> int:
        return sum(self.per_process)

    def max_in_window(self, window: float) -> int:
        best, lo = 0, 0
        for hi, stamp in enumerate(self.stamps):
            while stamp - self.stamps[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


def run_shared(
    backend: str,
    *,
    rate: float,
    burst: int,
    seconds: float,
    redis_url: str,
    env: dict[str, str],
) -> SharedResult:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    key = f"bench:ratelimit:{backend}:{uuid.uuid4().hex[:8]}"
    # Leave time for both children to import Django before the common start.
    start_at = time.time() + 4.0
    processes = [
        context.Process(
            target=taker,
            args=(env, backend, key, rate, burst, redis_url, start_at, seconds, results),
        )
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    answers = [results.get(timeout=seconds + 60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    if backend == "redis":
        import redis

        redis.Redis.from_url(redis_url).delete(key)
    stamps = sorted(stamp for _pid, _late, taken in answers for stamp in taken)
    return SharedResult(
        backend=backend,
        rate=rate,
        burst=burst,
        seconds=seconds,
        per_process=[len(taken) for _pid, _late, taken in answers],
        stamps=stamps,
        late=max(late for _pid, late, _taken in answers),
    )


def run_baseline(backend: str, *, seconds: float, redis_url: str) -> tuple[int, float]:
    key = f"bench:ratelimit:baseline:{backend}:{uuid.uuid4().hex[:8]}"
    bucket = make_bucket(backend, key, rate=1e12, burst=10**12, redis_url=redis_url)
    taken = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        assert bucket.try_take() == 0.0
        taken += 1
    elapsed = time.perf_counter() - started
    if backend == "redis":
        import redis

        redis.Redis.from_url(redis_url).delete(key)
    return taken, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="shared run, per process")
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=50.0, help="SEND_RATE_PER_SECOND")
    parser.add_argument("--burst", type=int, default=10, help="SEND_BURST")
    parser.add_argument(
        "--database-url", default="", help="postgres://... for a throwaway PostgreSQL database"
    )
    args = parser.parse_args()

    redis_url = redis_url_db10()  # before prepare_environment() clears REDIS_URL
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    try:
        prepare_environment(workdir, args.database_url)
        import django

        django.setup()
        from django.conf import settings
        from django.db import connection

        settings.DEBUG = False
        original_name = connection.settings_dict["NAME"]
        if connection.vendor != "sqlite":
            # Never test_<name>: a test run on the same server may be using that one.
            connection.settings_dict["TEST"]["NAME"] = f"bench_ratelimit_{os.getpid()}"
        test_name = connection.creation.create_test_db(
            verbosity=0, autoclobber=True, serialize=False
        )
        try:
            backends = ["redis"] if redis_reachable(redis_url) else []
            if not backends:
                print(f"(Redis at {redis_url} is unreachable: its rows are left out)")
            backends.append("database")
            env = {
                key: os.environ[key]
                for key in ("DJANGO_SETTINGS_MODULE", "VAR_DIR", "CELERY_BROKER_URL", "LOG_LEVEL")
            }
            env.update(
                DATABASE_URL=child_database_url(test_name),
                REDIS_URL="",
                SECRET_KEY=os.environ.get("SECRET_KEY", ""),
                DEBUG=os.environ.get("DEBUG", ""),
            )
            where = {"redis": redis_url, "database": f"{connection.vendor} {test_name}"}

            print(f"baseline: one process, unlimited bucket, {args.baseline_seconds:.0f} s")
            print(f"{'bucket':<9} {'tokens':>8} {'tokens/s':>9} {'ms/token':>9}  where")
            for backend in backends:
                taken, elapsed = run_baseline(
                    backend, seconds=args.baseline_seconds, redis_url=redis_url
                )
                print(
                    f"{backend:<9} {taken:>8} {taken / elapsed:>9.0f} "
                    f"{1000 * elapsed / taken:>9.3f}  {where[backend]}"
                )

            print()
            print(
                f"shared: two processes, one bucket, {args.seconds:.0f} s each, "
                f"burst {args.burst}; expected tokens = rate x seconds + burst"
            )
            print(
                f"{'bucket':<9} {'rate':>5} {'tokens':>7} {'expected':>8} {'combined/s':>10} "
                f"{'steady/s':>8} {'split':>11} {'max 1s':>6} {'max 100ms':>9} {'late':>6}"
            )
            for backend in backends:
                result = run_shared(
                    backend,
                    rate=args.rate,
                    burst=args.burst,
                    seconds=args.seconds,
                    redis_url=redis_url,
                    env=env,
                )
                expected = args.rate * args.seconds + args.burst
                split = "/".join(str(n) for n in result.per_process)
                print(
                    f"{backend:<9} {args.rate:>5.0f} {result.total:>7} {expected:>8.0f} "
                    f"{result.total / args.seconds:>10.1f} "
                    f"{(result.total - args.burst) / args.seconds:>8.1f} {split:>11} "
                    f"{result.max_in_window(1.0):>6} {result.max_in_window(0.1):>9} "
                    f"{result.late:>5.2f}s"
                )
        finally:
            connection.creation.destroy_test_db(original_name, verbosity=0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
