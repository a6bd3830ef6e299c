"""Benchmark of the embedded broker (issue 12): is a message ever torn, lost or repeated?

    .venv/bin/python bench/bench_broker.py [--seconds 20] [--rate 200] [--producers 2]
                                           [--consumers 2]

Straight through kombu, no Celery: producer processes put messages onto one queue, each
at most `--rate` per second, while consumer processes take them, for `--seconds`, on a
throwaway folder. The consumers poll without pause and keep up, so they sit at the queue's
edge, where the message being written right now is the next one read: the moment kombu's
file-system transport hands out a half-written file (kombu #1551). Each transport runs in
turn:

- filesystem: kombu's file-system transport (the old embedded broker, baseline);
- sqla: kombu's SQLAlchemy transport on an SQLite file, as kombu ships it;
- countersign: config.broker.SQLiteTransport, the embedded broker now.

For each: messages sent per second, how many were left in the queue at the end, lost
(neither taken nor left) or taken twice, and the errors a consumer saw. In a Celery
worker each such error stops the whole worker.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from queue import Empty
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench-broker"
PAD = "x" * 1500  # about the size of a Celery task message


def connect(transport: str, folder: Path) -> Any:
    from kombu import Connection

    if transport == "filesystem":
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        for name in ("queue", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return Connection("filesystem://", transport_options=options)
    if transport == "sqla":
        # Kombu passes every transport option to create_engine: none can be given.
        return Connection(f"sqla+sqlite:///{folder / 'kombu.sqlite3'}")
    return Connection(
        f"sqlite:///{folder / 'countersign.sqlite3'}",
        transport="config.broker:SQLiteTransport",
    )


def produce(transport: str, folder: Path, n: int, rate: float, stop_at: float, out: Any) -> None:
    sent = 0
    errors: Counter[str] = Counter()
    started = time.time()
    try:
        with connect(transport, folder) as conn:
            queue = conn.SimpleQueue(QUEUE)
            while time.time() < stop_at:
                queue.put({"token": f"{n}-{sent}", "pad": PAD})
                sent += 1
                ahead = started + sent / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
    except Exception as exc:  # the file-system transport also tears its exchange files
        errors[f"{type(exc).__name__} (producer died)"] += 1
    out.put(("sent", sent, [], dict(errors)))


def consume(transport: str, folder: Path, stop_at: float, out: Any) -> None:
    taken: list[str] = []
    errors: Counter[str] = Counter()
    try:
        with connect(transport, folder) as conn:
            queue = conn.SimpleQueue(QUEUE)
            # A few seconds past the producers' end, to drain what they left.
            while time.time() < stop_at + 5:
                try:
                    message = queue.get(block=False)
                except Empty:
                    continue
                except Exception as exc:  # what would stop a Celery worker
                    errors[type(exc).__name__] += 1
                    continue
                taken.append(message.payload["token"])
                message.ack()
    except Exception as exc:
        errors[f"{type(exc).__name__} (consumer died)"] += 1
    out.put(("taken", 0, taken, dict(errors)))


def left_in_queue(transport: str, folder: Path) -> int:
    with connect(transport, folder) as conn:
        return int(conn.SimpleQueue(QUEUE).qsize())


def run(
    transport: str, seconds: float, rate: float, producers: int, consumers: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        folder = Path(tmp)
        out: Any = multiprocessing.Queue()
        stop_at = time.time() + seconds
        processes = [
            multiprocessing.Process(target=produce, args=(transport, folder, n, rate, stop_at, out))
            for n in range(producers)
        ] + [
            multiprocessing.Process(target=consume, args=(transport, folder, stop_at, out))
            for _ in range(consumers)
        ]
        for process in processes:
            process.start()
        results = [out.get(timeout=seconds + 120) for _ in processes]
        for process in processes:
            process.join()
        left = left_in_queue(transport, folder)
    sent = sum(count for kind, count, _, _ in results if kind == "sent")
    taken = Counter(token for _, _, tokens, _ in results for token in tokens)
    errors: Counter[str] = Counter()
    for _, _, _, seen in results:
        errors.update(seen)
    return {
        "transport": transport,
        "sent": sent,
        "per_second": sent / seconds,
        "left": left,
        "lost": sent - len(taken) - left,
        "repeated": sum(1 for count in taken.values() if count > 1),
        "errors": ", ".join(f"{name} x{n}" for name, n in errors.items()) or "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=200.0, help="per producer, per second")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    print(
        f"\n{args.producers} producers (at most {args.rate:.0f}/s each), "
        f"{args.consumers} consumers, {args.seconds:.0f} s\n"
    )
    header = f"{'transport':<12} {'sent':>7} {'sent/s':>7} {'left':>5} {'lost':>5} {'twice':>6}"
    print(header + "  errors")
    for transport in ("filesystem", "sqla", "countersign"):
        row = run(transport, args.seconds, args.rate, args.producers, args.consumers)
        print(
            f"{row['transport']:<12} {row['sent']:>7} {row['per_second']:>7.0f} "
            f"{row['left']:>5} {row['lost']:>5} {row['repeated']:>6}  {row['errors']}"
        )


if __name__ == "__main__":
    main()
