"""Benchmark of the CSV user import: time and memory at 1,000, 10,000 and 100,000 rows.

    .venv/bin/python bench/bench_import_users.py [--sizes 1000,10000,100000] [--chunk-size N]

Runs against a throwaway SQLite database under var/bench/ (recreated on every run), never
the configured one. For each size it writes a CSV (0.5% repeated addresses in another case,
0.5% bad addresses, non-ASCII names) and measures:

- baseline: reading the same file with csv.reader and nothing else;
- import: a first import, every row new, timed without tracemalloc;
- re-import: the same file again (everything unchanged), timed;
- traced: an import of an equal file with fresh addresses under tracemalloc, for the peak
  Python allocation (tracemalloc slows Python down, so its time is not the speed figure).

"max RSS" is the process high-water mark so far (it never goes down), so read it per size
in increasing order. Needs SECRET_KEY or DEBUG=true; without SECRET_KEY it sets DEBUG=true
for this throwaway database and then turns query logging off.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
DATABASE = BENCH_DIR / "bench.sqlite3"

FIRST_NAMES = ("Emma", "Zoë", "Łukasz", "Siobhán", "Smith, John", 'Jane "JJ"', "太郎", "أحمد")
LAST_NAMES = ("García", "O'Brien", "Müller", "Kowalski", "山田", "van der Berg", "Nguyễn")


def prepare_environment() -> None:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DATABASE}{suffix}").unlink(missing_ok=True)
    # Set before django.setup(): settings read them once, at import.
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{DATABASE}"
    os.environ["VAR_DIR"] = str(BENCH_DIR)
    if not os.environ.get("SECRET_KEY"):
        os.environ["DEBUG"] = "true"
    sys.path.insert(0, str(ROOT))


def write_csv(path: Path, rows: int, prefix: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "first_name", "last_name", "locale", "plan", "country"])
        for i in range(rows):
            if i % 200 == 199:
                email = f"{prefix}-{i}@example.org, other-{i}@example.org"  # a bad row
            elif i % 200 == 99:
                email = f"{prefix.upper()}-{i - 1}@EXAMPLE.ORG"  # repeats the row before
            else:
                email = f"{prefix}-{i}@example.org"
            writer.writerow(
                [
                    email,
                    FIRST_NAMES[i % len(FIRST_NAMES)],
                    LAST_NAMES[i % len(LAST_NAMES)],
                    ("en", "de", "fr", "ja")[i % 4],
                    "pro" if i % 3 == 0 else "free",
                    ("US", "DE", "FR", "JP", "PL")[i % 5],
                ]
            )


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(action: Callable[[], Any], *, traced: bool) -> tuple[Any, float, float | None]:
    """(result, seconds, peak traced MiB or None)."""
    if traced:
        tracemalloc.start()
        tracemalloc.reset_peak()
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    peak = None
    if traced:
        peak = tracemalloc.get_traced_memory()[1] / (1024 * 1024)
        tracemalloc.stop()
    return result, seconds, peak


def read_only(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as source:
        return sum(1 for _ in csv.reader(source))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--chunk-size", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    prepare_environment()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from accounts.importer import import_users_csv

    # DEBUG keeps every SQL statement in memory; that would be measured as ours.
    settings.DEBUG = False
    call_command("migrate", verbosity=0)

    header = (
        f"{'rows':>8}  {'step':<28} {'seconds':>8} {'rows/s':>9} {'peak traced':>12} {'max RSS':>9}"
    )
    print(f"SQLite {DATABASE.relative_to(ROOT)}, chunk size {args.chunk_size}")
    print(header)
    print("-" * len(header))

    def show(rows: int, step: str, seconds: float, peak: float | None) -> None:
        traced = f"{peak:9.1f} MiB" if peak is not None else f"{'-':>12}"
        print(
            f"{rows:>8}  {step:<28} {seconds:8.2f} {rows / seconds:9.0f} "
            f"{traced} {max_rss_mib():5.0f} MiB",
            flush=True,
        )

    for size in sizes:
        timed_file = BENCH_DIR / f"users-{size}.csv"
        traced_file = BENCH_DIR / f"users-{size}-traced.csv"
        write_csv(timed_file, size, prefix=f"timed{size}")
        write_csv(traced_file, size, prefix=f"traced{size}")

        _, seconds, peak = measure(partial(read_only, timed_file), traced=True)
        show(size, "baseline: csv.reader only", seconds, peak)

        run = partial(import_users_csv, chunk_size=args.chunk_size)
        report, seconds, _ = measure(partial(run, timed_file), traced=False)
        show(size, f"import ({report.created} new)", seconds, None)
        report, seconds, _ = measure(partial(run, timed_file), traced=False)
        show(size, f"re-import ({report.unchanged} unchanged)", seconds, None)
        report, seconds, peak = measure(partial(run, traced_file), traced=True)
        show(size, "import under tracemalloc", seconds, peak)
        print(f"{'':>10}{report.summary()} (expected: {size // 200} bad, {size // 200} repeated)")


if __name__ == "__main__":
    main()
