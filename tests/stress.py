"""Test-only Celery task and producer for the broker stress test (tests/integration/test_embedded_broker.py).

Not a test module. Workers load it with ``-I tests.stress``; producers run it as
``python -m tests.stress PREFIX COUNT``, as a web process would enqueue: one ``delay()``
per token, each on the same broker and settings as the workers.

Each handled token is appended as one line to a file of the pool process that ran it,
under ``STRESS_RECORD_DIR``: one writer per file, so no line is torn, and the checker can
count how often every token ran.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from celery import shared_task


@shared_task(name="countersign.test.record_token", ignore_result=True)
def record_token(token: str) -> None:
    record_dir = Path(os.environ["STRESS_RECORD_DIR"])
    with (record_dir / f"{os.getpid()}.handled").open("a", encoding="utf-8") as handled:
        handled.write(token + "\n")


def handled_tokens(record_dir: Path) -> list[str]:
    """Every token recorded so far, once per time it ran."""
    tokens: list[str] = []
    for path in sorted(record_dir.glob("*.handled")):
        # Only whole lines: a line being appended right now is counted next time.
        text = path.read_text(encoding="utf-8")
        tokens.extend(text[: text.rfind("\n") + 1].splitlines())
    return tokens


def produce(prefix: str, count: int) -> None:
    import django

    django.setup()
    started = time.monotonic()
    for i in range(count):
        record_token.delay(f"{prefix}-{i}")
    print(f"{prefix}: enqueued {count} in {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    produce(sys.argv[1], int(sys.argv[2]))
