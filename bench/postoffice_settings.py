"""Settings for the django-post-office baseline of bench/fanout.py (never used by the app).

The project's settings plus `post_office`, with its Celery integration on and Django's
SMTP backend as its transport. Everything else (database, broker) comes from the same
environment variables as the Countersign run, so both baselines share one database
server, one broker and one sink.
"""

from __future__ import annotations

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
POST_OFFICE = {
    "CELERY_ENABLED": True,
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    # Our messages carry their own Message-ID, like Countersign's.
    "MESSAGE_ID_ENABLED": False,
    "MAX_RETRIES": 0,
}
