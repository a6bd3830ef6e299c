"""`make demo` end to end: scripts/demo.sh serves the admin, and Ctrl-C leaves nothing behind.

Each run gets its own VAR_DIR (database, broker, outbox) under tmp_path and a free port,
so it never touches the development database or a demo someone is running. Every process
the script starts inherits a unique marker variable; scanning /proc for it finds them all,
whatever process group or session they moved to.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = [pytest.mark.worker]

ROOT = Path(settings.BASE_DIR)
PASSWORD = "demo-test-password-7f3a"
# Settings that would point the demo at the suite's services or relax it: the demo must
# run on its own embedded defaults.
NOT_INHERITED = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "DEBUG",
    "SECRET_KEY",
    "PUBLIC_BASE_URL",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process carrying the marker in its environment."""
    needle = f"COUNTERSIGN_DEMO_RUN={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if stat[stat.rindex(")") + 2] == "Z":  # exited, waiting to be reaped
            continue
        found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def like_a_terminal_job() -> None:
    # A terminal's foreground job takes Ctrl-C. A test run started in the background (`&`
    # in a script, nohup) hands its children SIGINT ignored, and bash cannot trap a signal
    # it was started ignoring: the demo would never hear Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """One run of scripts/demo.sh in its own session, like a terminal's foreground job."""

    def __init__(self, tmp_path: Path, port: int | None = None, **extra_env: str) -> None:
        self.marker = uuid.uuid4().hex
        self.port = port or free_port()
        self.var_dir = tmp_path / "var"
        self.log_path = tmp_path / "demo.log"
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(
            VAR_DIR=str(self.var_dir),
            DEMO_PORT=str(self.port),
            DEMO_USERS="50",
            DEMO_PASSWORD=PASSWORD,
            COUNTERSIGN_DEMO_RUN=self.marker,
            **extra_env,
        )
        with self.log_path.open("wb") as log:
            self.script = subprocess.Popen(
                ["bash", "scripts/demo.sh"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=like_a_terminal_job,
            )
        self.started_at = time.monotonic()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> dict[int, str]:
        return marked_processes(self.marker)

    def wait_serving(self, timeout: float = 240) -> float:
        """Seconds from launch until /admin/login/ answers 200 and the banner is out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.script.poll() is None, f"demo.sh exited early:\n{self.output()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.base_url}/admin/login/", timeout=5) as r:
                    if r.status == 200 and "Press Ctrl-C to stop everything." in self.output():
                        return time.monotonic() - self.started_at
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"demo never served /admin/login/:\n{self.output()[-3000:]}")

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 180) -> None:
        """Poll until `condition()` holds; the script must keep running meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.script.poll() is None, f"demo.sh exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s waiting for {what}:\n{self.output()[-3000:]}\n"
                f"processes: {self.processes()}"
            )
            time.sleep(0.2)

    def workers(self) -> tuple[int | None, list[int]]:
        """(the worker's main process, its pool processes) as they are right now."""
        workers = [pid for pid, cmd in self.processes().items() if " worker " in cmd]
        main = [pid for pid in workers if parent_pid(pid) not in workers]
        pool = [pid for pid in workers if pid not in main]
        return (main[0] if len(main) == 1 else None), sorted(pool)

    def serves(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/admin/login/", timeout=10) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_exit(self, timeout: float) -> int:
        return self.script.wait(timeout=timeout)

    def kill_everything(self) -> None:
        """Teardown safety net for a failed test: nothing of this run may outlive it."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.script.poll() is None:
            self.script.wait(timeout=10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    run = Demo(tmp_path)
    try:
        yield run
    finally:
        run.kill_everything()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def admin_login(base_url: str, username: str, password: str) -> tuple[int, str, str]:
    """Log in through the real admin form: (status, Location, body of the answer)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    with opener.open(f"{base_url}/admin/login/?next=/admin/", timeout=10) as page:
        form = page.read().decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert match, "login page has no CSRF token"
    data = urllib.parse.urlencode(
        {
            "csrfmiddlewaretoken": match.group(1),
            "username": username,
            "password": password,
            "next": "/admin/",
        }
    ).encode()
    try:
        with opener.open(f"{base_url}/admin/login/?next=/admin/", data=data, timeout=30) as r:
            return r.status, "", r.read().decode()
    except urllib.error.HTTPError as redirect:  # NoRedirect: a 302 arrives as an "error"
        location = redirect.headers.get("Location", "")
        if redirect.code != 302:
            return redirect.code, location, redirect.read().decode()
    with opener.open(f"{base_url}{location}", timeout=30) as index:
        return 302, location, index.read().decode()


def test_demo_serves_the_admin_and_ctrl_c_stops_every_process(demo: Demo) -> None:
    demo.wait_serving()
    # The worker's pool comes up after the web server answers, slowly on a busy machine.
    demo.wait_for("the worker and its two pool processes", lambda: len(demo.workers()[1]) == 2)
    demo.wait_for("beat", lambda: any(" beat " in c for c in demo.processes().values()))
    running = demo.processes()
    assert any("runserver" in c for c in running.values()), running

    status, location, index = admin_login(demo.base_url, "olivia", PASSWORD)
    refused, _, refusal = admin_login(demo.base_url, "olivia", "not-the-password")

    assert (status, location) == (302, "/admin/")
    assert "Log out" in index and "Olivia" in index
    assert refused == 200 and "Please enter the correct" in refusal

    # What Ctrl-C in a terminal does: SIGINT to the foreground process group.
    interrupted = time.monotonic()
    os.killpg(demo.script.pid, signal.SIGINT)
    returncode = demo.wait_exit(timeout=30)
    while demo.processes() and time.monotonic() < interrupted + 20:
        time.sleep(0.2)
    took = time.monotonic() - interrupted

    assert demo.processes() == {}
    assert took < 20, f"stopping took {took:.1f}s"
    assert returncode == 130
    assert "Stopped." in demo.output()
    assert (demo.var_dir / "countersign.sqlite3").exists()  # its own database, not var/


def test_demo_restarts_a_dead_worker_while_the_web_keeps_serving_until_restarts_run_out(
    tmp_path: Path,
) -> None:
    demo = Demo(tmp_path, DEMO_RESTARTS="1")
    try:
        demo.wait_serving()
        demo.wait_for("the worker's pool", lambda: len(demo.workers()[1]) == 2)
        first, first_pool = demo.workers()
        assert first is not None

        os.kill(first, signal.SIGKILL)  # a crash: no warm shutdown, the pool is orphaned
        demo.wait_for("the restart message", lambda: "restarting it" in demo.output())
        demo.wait_for(
            "a new worker with its own pool",
            lambda: demo.workers()[0] not in (None, first) and len(demo.workers()[1]) == 2,
        )
        second, second_pool = demo.workers()

        assert demo.serves()
        assert "the worker service stopped unexpectedly (exit status 137); restarting it " in (
            demo.output()
        )
        assert not set(first_pool) & set(second_pool)
        assert not set(first_pool) & set(demo.processes())  # the old pool was cleared away
        assert any(" beat " in c for c in demo.processes().values())

        # The one restart allowed is used up: the next crash stops everything.
        assert second is not None
        os.kill(second, signal.SIGKILL)
        returncode = demo.wait_exit(timeout=60)

        assert returncode == 1
        assert "was already restarted 1 times; stopping the others" in demo.output()
        assert demo.processes() == {}
    finally:
        demo.kill_everything()


def test_demo_stops_everything_and_fails_when_the_web_server_dies(demo: Demo) -> None:
    demo.wait_serving()
    web = [pid for pid, cmd in demo.processes().items() if "runserver" in cmd]
    assert len(web) == 1

    os.kill(web[0], signal.SIGKILL)
    returncode = demo.wait_exit(timeout=60)

    assert returncode == 1
    assert "the web service stopped unexpectedly" in demo.output()
    assert "restarting" not in demo.output()
    assert demo.processes() == {}


def tcp_states(port: int) -> set[str]:
    """States (hex, as the kernel writes them) of IPv4 TCP sockets with local `port`."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            states.add(fields[3])
    return states


TIME_WAIT = "06"


def check_port(port: int) -> int:
    return subprocess.run(
        [sys.executable, "scripts/check_port.py", "127.0.0.1", str(port)], cwd=ROOT, timeout=60
    ).returncode


def test_port_check_accepts_a_port_in_time_wait_and_refuses_a_listener() -> None:
    # A stopped demo's server: it closed its connections first, so they wait in TIME_WAIT.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()

    while_listening = check_port(port)
    served.close()
    client.close()
    listener.close()
    deadline = time.monotonic() + 10
    while TIME_WAIT not in tcp_states(port):
        assert time.monotonic() < deadline, tcp_states(port)
        time.sleep(0.05)
    # Control: a plain bind (the old check) refuses the port while the TIME_WAIT lasts.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    after_stop = check_port(port)

    assert while_listening == 1
    assert after_stop == 0


def test_demo_refuses_a_port_in_use_before_touching_the_database(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = Demo(tmp_path, port=taken.getsockname()[1])
        try:
            returncode = run.wait_exit(timeout=120)
        finally:
            run.kill_everything()

    assert returncode == 1
    assert f"port {run.port} on 127.0.0.1 is in use" in run.output()
    assert not (run.var_dir / "countersign.sqlite3").exists()
    assert run.processes() == {}
