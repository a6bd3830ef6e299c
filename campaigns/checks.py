"""System checks: the guarded backend is in place and no anymail setting adds recipients.

The anymail rules live with the guard (`guard.mail_settings`), which also applies them
before every send, since workers never run `manage.py check`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from .backends import GuardedBackend
from .guard.mail_settings import anymail_settings_errors

GUARDED_BACKEND = "campaigns.backends.GuardedBackend"


def backend_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    if settings.EMAIL_BACKEND != GUARDED_BACKEND:
        errors.append(
            checks.Error(
                f"EMAIL_BACKEND is {settings.EMAIL_BACKEND!r}, not the guarded backend.",
                hint=f"Set EMAIL_BACKEND = {GUARDED_BACKEND!r} and name the real "
                "backend in EMAIL_TRANSPORT.",
                id="countersign.E001",
            )
        )
    transport = getattr(settings, "EMAIL_TRANSPORT", "")
    try:
        transport_class = import_string(transport) if transport else None
    except ImportError as error:
        errors.append(
            checks.Error(
                f"EMAIL_TRANSPORT {transport!r} cannot be imported: {error}",
                id="countersign.E002",
            )
        )
    else:
        if transport_class is None or (
            isinstance(transport_class, type) and issubclass(transport_class, GuardedBackend)
        ):
            errors.append(
                checks.Error(
                    f"EMAIL_TRANSPORT is {transport!r}: it must name the real mail backend "
                    "(the outbox, Django's SMTP backend or an anymail provider).",
                    id="countersign.E002",
                )
            )
    return errors


@checks.register(checks.Tags.security)
def check_mail_guard(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return backend_errors() + anymail_settings_errors()
