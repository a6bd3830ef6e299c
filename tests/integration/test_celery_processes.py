"""A real worker process and a real beat process against the configured broker.

These run on whatever the environment names: SQLite and the SQLite-file broker by
default, PostgreSQL and Redis in the second CI pass.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings
from django.db import connection

from campaigns.tasks import health_check

if TYPE_CHECKING:
    from tests.workers import BeatProcess, CeleryWorkers

# Loaded as a plugin (not imported here) so pytest rewrites its asserts and owns its fixtures.
pytest_plugins = ["tests.workers"]
pytestmark = [pytest.mark.worker]


@pytest.mark.django_db(transaction=True)
def test_health_check_round_trips_through_a_separate_worker_process(
    celery_workers: CeleryWorkers,
) -> None:
    worker = celery_workers(name="health", concurrency=1)
    assert worker.pid != os.getpid()
    pool = worker.child_pids()
    assert len(pool) == 1, f"expected one prefork pool process, found {pool}"
    assert set(pool) < set(worker.group_pids())

    token = secrets.token_hex(16)
    async_result = health_check.delay(token)
    answer = async_result.get(timeout=60)

    assert answer["token"] == token
    assert answer["database"] == connection.vendor
    # Answered by the worker's pool process, on this test's database, not by this process.
    assert answer["pid"] in pool and answer["pid"] != os.getpid()
    assert answer["database_name"] == str(connection.settings_dict["NAME"])
    # The worker's own log records the execution: the task ran there, not in this process.
    worker.wait_for_log(f"Task countersign.health_check[{async_result.id}] succeeded", 10)

    assert worker.stop() is not None
    # Pool children share the leader's process group: an empty group means all are gone.
    assert worker.group_pids() == []


@pytest.mark.django_db(transaction=True)
def test_leftover_broker_messages_can_be_purged_before_workers_start(
    celery_workers: CeleryWorkers,
) -> None:
    # The fixture purged on entry, so exactly these two are waiting now.
    health_check.delay("left-over-1")
    health_check.delay("left-over-2")

    assert celery_workers.purge() == 2
    assert celery_workers.purge() == 0


@pytest.mark.django_db(transaction=True)
def test_worker_is_started_on_the_test_database_not_the_configured_one(
    celery_workers: CeleryWorkers,
) -> None:
    worker = celery_workers(name="envcheck", concurrency=1)
    test_db_name = str(connection.settings_dict["NAME"])

    url = worker.env["DATABASE_URL"]

    if connection.vendor == "sqlite":
        assert url == "sqlite:///" + str(Path(test_db_name).resolve())
        assert Path(test_db_name).exists()
    else:
        assert test_db_name.startswith("test_")
        assert url.startswith("postgres://")
        assert url.split("?", 1)[0].endswith(f"/{test_db_name}")
    assert worker.env["VAR_DIR"] == str(settings.VAR_DIR)
    assert worker.env.get("CELERY_BROKER_URL") == os.environ.get("CELERY_BROKER_URL")


@pytest.mark.django_db(transaction=True)
def test_kill9_takes_down_the_worker_and_its_pool_children(
    celery_workers: CeleryWorkers,
) -> None:
    worker = celery_workers(name="doomed", concurrency=2)
    pool = worker.child_pids()
    assert len(pool) == 2

    victims = worker.kill9()

    assert set(victims) == {worker.pid, *pool}
    assert worker.returncode == -9
    assert worker.group_pids() == []


def test_beat_starts_on_the_configured_broker_and_writes_its_schedule(
    celery_beat: Callable[..., BeatProcess], tmp_path: Path
) -> None:
    # Its own VAR_DIR: the schedule file the settings derive from it lands in tmp_path.
    beat = celery_beat(extra_env={"VAR_DIR": str(tmp_path)}, loglevel="DEBUG")
    # "Waking up" is logged after the first tick: the schedule is loaded and running.
    beat.wait_for_log("beat: Waking up", timeout=60)
    log = beat.log_text()
    scheme = settings.CELERY_BROKER_URL.split("://", 1)[0]
    assert f". broker -> {scheme}://" in log
    assert f". db -> {tmp_path / 'celerybeat-schedule'}\n" in log

    assert beat.stop() == 0
    assert beat.group_pids() == []
    schedule_files = sorted(tmp_path.glob("celerybeat-schedule*"))
    assert schedule_files, f"no schedule file in {tmp_path}: {sorted(tmp_path.iterdir())}"
    assert all(path.stat().st_size > 0 for path in schedule_files)
