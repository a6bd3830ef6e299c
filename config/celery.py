"""The Celery app: `celery -A config worker` and `celery -A config beat`."""

from __future__ import annotations

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Countersign's transports (config/broker.py: the embedded SQLite broker, and Redis, each
# dropping a message it cannot decode) under the URL schemes settings accept. The broker
# URL alone picks them, in every process that loads this app, and Celery's banner and logs
# still read sqlite:/// and redis://. Names only: kombu imports a transport when used.
TRANSPORT_ALIASES.update(
    {
        "sqlite": "config.broker:SQLiteTransport",
        "redis": "config.broker:RedisTransport",
        "rediss": "config.broker:RedisTransport",
    }
)

app = Celery("countersign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
