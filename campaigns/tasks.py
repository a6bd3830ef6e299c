"""Celery tasks: thin wrappers that take ids and call services.

The broker only carries "there is work"; every task is safe to run twice or not at all,
because the work itself is claimed from the database with fenced updates.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict

from celery import shared_task
from django.db import connection

from . import worker


@shared_task(name="countersign.health_check", ignore_result=False)
def health_check(token: str) -> dict[str, str | int]:
    """Round-trip probe: proves a worker process consumed the broker and can answer,
    and says which process and which database answered."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "database": connection.vendor,
        "database_name": str(connection.settings_dict["NAME"]),
    }


# acks_late + reject_on_worker_lost: a batch lost with its worker is redelivered, which is
# harmless (claims are fenced) and faster than waiting for the sweeper.
@shared_task(
    name="countersign.send_batch",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=240,
    time_limit=300,
)
def send_batch(campaign_id: int) -> dict[str, object]:
    result = worker.send_batch(campaign_id)
    if result.more_work:
        # Pull the next batch: the chain goes on while there is due work.
        send_batch.delay(campaign_id)
    return {"claimed": result.claimed, "sent": result.sent, "stopped": result.stopped}


@shared_task(name="countersign.sweep", soft_time_limit=110, time_limit=120)
def sweep() -> dict[str, int]:
    return asdict(worker.sweep())
