"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

import socket

from celery import shared_task


@shared_task(name="countersign.health_check", ignore_result=False)
def health_check(token: str) -> dict[str, str]:
    """Round-trip probe: proves a worker process consumed the broker and can answer."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"token": token, "host": socket.gethostname(), "database": connection.vendor}
