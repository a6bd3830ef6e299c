"""Real Celery processes for integration tests: workers and beat as separate OS processes.

Not a test module. Tests load it as a plugin (``pytest_plugins = ["tests.workers"]``) to
get the ``celery_workers`` fixture, or call ``start_worker`` / ``start_beat`` directly.

Each process is started with ``start_new_session=True``, so it leads its own process
group: ``stop()`` asks the main process to shut down warm and then clears whatever is left
in the group (the prefork pool included), and ``kill9()`` imitates a crash by SIGKILLing
the main process and its pool children by PID, which leaves no chance for a warm shutdown.

The child sees the *test* database, not the development one: its ``DATABASE_URL`` is
built from the live connection settings at start time. That is only meaningful inside a
``transaction=True`` test, where rows are committed and so visible to another process;
the fixture therefore requests ``transactional_db``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings
from kombu import Queue


def _celery_command() -> list[str]:
    # The console script next to the interpreter running pytest: the same venv.
    script = Path(sys.executable).with_name("celery")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "celery"]


def _log_dir() -> Path:
    path = Path(settings.VAR_DIR) / "workers"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- /proc helpers ------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None if it no longer exists."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has already exited)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children_of(pid: int) -> list[int]:
    """Live direct children of a process."""
    found = []
    for candidate in _all_pids():
        stat = _proc_stat(candidate)
        if stat is not None and stat[1] == pid and stat[0] != "Z":
            found.append(candidate)
    return sorted(found)


def descendants_of(pid: int) -> list[int]:
    """Live children, grandchildren, ... of a process."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children_of(frontier.pop())
        found.extend(kids)
        frontier.extend(kids)
    return sorted(found)


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for candidate in _all_pids():
        stat = _proc_stat(candidate)
        if stat is not None and stat[2] == pgid and stat[0] != "Z":
            members.append(candidate)
    return sorted(members)


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- environment --------------------------------------------------------------------------


def worker_database_url() -> str:
    """A DATABASE_URL naming the database this test process is using right now.

    Inside a test that is the test database pytest-django created (its NAME has replaced
    the configured one in the connection settings), so the child works on the same rows.
    """
    from django.db import connections

    connection = connections["default"]
    db = connection.settings_dict
    engine = db["ENGINE"]
    name = str(db["NAME"])
    if connection.vendor == "sqlite":
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError(
                "The test database is in memory, so no other process can open it: "
                "settings must give DATABASES['default']['TEST']['NAME'] a file path."
            )
        # sqlite:// + an absolute path (which starts with "/") = four slashes.
        return "sqlite:///" + str(Path(name).resolve())
    if engine.endswith("postgresql"):
        user = quote(str(db.get("USER") or ""), safe="")
        password = quote(str(db.get("PASSWORD") or ""), safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = str(db.get("HOST") or "")
        port = f":{db['PORT']}" if db.get("PORT") else ""
        options = {
            key: str(value)
            for key, value in (db.get("OPTIONS") or {}).items()
            if isinstance(value, str | int)
        }
        query = f"?{urlencode(options)}" if options else ""
        return f"postgres://{auth}{host}{port}/{quote(name, safe='')}{query}"
    raise RuntimeError(f"No worker DATABASE_URL for database engine {engine!r}")


def child_environment(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment (pytest-env defaults included), on the test DB."""
    env = dict(os.environ)
    env["DATABASE_URL"] = worker_database_url()
    env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings")
    # Inherited values the child must resolve the same way, whatever its cwd.
    env["VAR_DIR"] = str(settings.VAR_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    # Celery refuses nothing as root, but says so loudly; CI runs as root.
    env.setdefault("C_FORCE_ROOT", "1")
    if extra_env:
        env.update(extra_env)
    return env


def purge_broker(queues: list[str] | None = None) -> int:
    """Drop messages left in the broker by earlier tests, so a new worker only sees ours.

    Without this a worker would pick up tasks that other tests enqueued and never ran,
    for rows that no longer exist. Returns the number of messages dropped.
    """
    from config.celery import app

    names = queues or [app.conf.task_default_queue]
    dropped = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in names:
            # A queue nobody declared yet purges as empty on both transports we use.
            dropped += Queue(queue).bind(channel).purge() or 0
    return dropped


def queued_messages(queue: str | None = None) -> int:
    """Messages waiting in a queue of the configured broker (not those a worker holds)."""
    from config.celery import app

    with app.connection_for_read() as conn:
        declared: Any = Queue(queue or app.conf.task_default_queue).bind(conn.default_channel)
        try:
            _name, waiting, _consumers = declared.queue_declare(passive=True)
        except conn.channel_errors:
            # Redis keeps no empty lists: a queue with nothing in it "does not exist".
            return 0
        return int(waiting)


# --- processes ----------------------------------------------------------------------------


class CeleryProcess:
    """One Celery OS process (worker or beat) leading its own process group."""

    def __init__(self, *, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            # The child keeps its own copy of the descriptor; ours can close at once.
            self.popen = subprocess.Popen(
                argv,
                cwd=Path(settings.BASE_DIR),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        # start_new_session: the leader's pid is also the group id.
        self.pgid = self.pid

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.popen.returncode}>"

    def __enter__(self) -> CeleryProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def child_pids(self) -> list[int]:
        """Live direct children: for a prefork worker, its pool processes."""
        return children_of(self.pid)

    def group_pids(self) -> list[int]:
        """Live processes still in this process group (the leader included).

        Pool children inherit the group, so an empty list means none of them survived.
        """
        return group_members(self.pgid)

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Wait until ``text`` appears in the log; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.is_running():
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} before logging {text!r}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} did not log {text!r} within {timeout}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30) -> int | None:
        """Stop it cleanly, then make sure: nothing of its process group survives.

        SIGTERM goes to the main process only: a Celery worker then does its warm shutdown
        and ends its own pool. Signalling the pool children directly as well (a SIGTERM to
        the whole group) kills them under the main process, which logs them as lost and can
        stall its shutdown. Whatever is left after that (say, pool children orphaned by a
        crash) gets SIGTERM, then SIGKILL, as a group. The main process is always reaped.
        """
        if self.is_running():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.group_pids():
            self._signal_group(signal.SIGTERM)
            if not _wait_until(lambda: not self.group_pids(), timeout=5):
                self._signal_group(signal.SIGKILL)
                _wait_until(lambda: not self.group_pids(), timeout=10)
        return self.popen.returncode

    def kill9(self) -> list[int]:
        """Crash it: SIGKILL the main process and every descendant by PID, no warm shutdown.

        Returns the pids that were killed. The leader is reaped here; orphaned pool
        children are reaped by init, so only their liveness (not-zombie) is waited for.
        """
        victims = [self.pid, *descendants_of(self.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)
        _wait_until(lambda: not any(is_alive(pid) for pid in victims), timeout=10)
        return victims

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass


class WorkerProcess(CeleryProcess):
    """A ``celery -A config worker`` process."""

    def __init__(self, *, nodename: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.nodename = nodename

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        # Celery logs "<nodename> ready." once the consumer is connected and the pool is up.
        self.wait_for_log(f"{self.nodename} ready.", timeout=timeout)
        return self


class BeatProcess(CeleryProcess):
    """A ``celery -A config beat`` process."""

    def wait_ready(self, timeout: float = 60) -> BeatProcess:
        self.wait_for_log("beat: Starting...", timeout=timeout)
        return self


def start_worker(
    *,
    name: str,
    concurrency: int = 1,
    pool: str = "prefork",
    extra_env: dict[str, str] | None = None,
    queues: str | None = None,
    loglevel: str = "INFO",
    extra_args: list[str] | None = None,
) -> WorkerProcess:
    """Launch a worker on the test database and broker. Call ``.wait_ready()`` next.

    Gossip, mingle and heartbeats are off: they only slow start-up and make workers talk
    to each other, and tests want each worker to act on the broker alone.
    """
    hostname = socket.gethostname()
    argv = [
        *_celery_command(),
        "-A",
        "config",
        "worker",
        "-n",
        f"{name}@%h",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if queues:
        argv += ["-Q", queues]
    argv += extra_args or []
    return WorkerProcess(
        nodename=f"{name}@{hostname}",
        name=name,
        argv=argv,
        env=child_environment(extra_env),
        log_path=_log_dir() / f"{name}.log",
    )


def start_beat(
    *,
    name: str = "beat",
    extra_env: dict[str, str] | None = None,
    loglevel: str = "INFO",
    extra_args: list[str] | None = None,
) -> BeatProcess:
    """Launch ``celery -A config beat`` with the test environment. Call ``.wait_ready()``."""
    argv = [*_celery_command(), "-A", "config", "beat", f"--loglevel={loglevel}"]
    argv += extra_args or []
    return BeatProcess(
        name=name,
        argv=argv,
        env=child_environment(extra_env),
        log_path=_log_dir() / f"{name}.log",
    )


def launch(
    argv: list[str],
    *,
    name: str,
    extra_env: dict[str, str] | None = None,
) -> CeleryProcess:
    """Launch any ``celery ...`` command line (e.g. one taken from docker-compose.yml).

    A leading ``celery`` is replaced by this venv's console script; the rest is used as is.
    """
    if argv and argv[0] == "celery":
        argv = [*_celery_command(), *argv[1:]]
    return CeleryProcess(
        name=name,
        argv=argv,
        env=child_environment(extra_env),
        log_path=_log_dir() / f"{name}.log",
    )


class CeleryWorkers:
    """What the ``celery_workers`` fixture yields: starts processes and remembers them."""

    def __init__(self) -> None:
        self.started: list[CeleryProcess] = []

    def __call__(self, *, ready_timeout: float | None = 60, **kwargs: Any) -> WorkerProcess:
        """``start_worker(**kwargs)``, then wait until ready unless ``ready_timeout`` is None."""
        worker = start_worker(**kwargs)
        self.started.append(worker)
        if ready_timeout is not None:
            worker.wait_ready(ready_timeout)
        return worker

    def beat(self, *, ready_timeout: float | None = 60, **kwargs: Any) -> BeatProcess:
        beat = start_beat(**kwargs)
        self.started.append(beat)
        if ready_timeout is not None:
            beat.wait_ready(ready_timeout)
        return beat

    def launch(
        self, argv: list[str], *, name: str, extra_env: dict[str, str] | None = None
    ) -> CeleryProcess:
        """``launch(argv)``, stopped at teardown like the rest. Wait with ``wait_for_log``."""
        process = launch(argv, name=name, extra_env=extra_env)
        self.started.append(process)
        return process

    def queued(self, queue: str | None = None) -> int:
        """``queued_messages``: what waits in the broker right now."""
        return queued_messages(queue)

    def purge(self, queues: list[str] | None = None) -> int:
        """``purge_broker``: the fixture already did this once before the test started."""
        return purge_broker(queues)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def celery_beat() -> Iterator[Callable[..., BeatProcess]]:
    """Start ``celery beat`` processes (no database needed); all are stopped at teardown."""
    started: list[BeatProcess] = []

    def start(*, ready_timeout: float | None = 60, **kwargs: Any) -> BeatProcess:
        beat = start_beat(**kwargs)
        started.append(beat)
        if ready_timeout is not None:
            beat.wait_ready(ready_timeout)
        return beat

    try:
        yield start
    finally:
        for beat in reversed(started):
            beat.stop()


@pytest.fixture
def celery_workers(transactional_db: None) -> Iterator[CeleryWorkers]:
    """Start real worker processes on the test database; all are stopped at teardown.

    Depends on ``transactional_db`` so rows the test writes are committed (another
    process cannot see an open test transaction), and so teardown runs in the right
    order: workers stop, and close their connections, before the tables are flushed
    and before the test database is dropped.
    """
    purge_broker()
    workers = CeleryWorkers()
    try:
        yield workers
    finally:
        workers.stop_all()
