"""System checks: the guarded backend is in place and no anymail setting adds recipients.

Anymail merges SEND_DEFAULTS into every payload, so a default `bcc` copies every
message to someone, a default merge attribute turns every send into a batch, and the
providers' batch modes (Postmark's bulk API, MailerSend's "expose-to-list") send one
payload to many people. None of that is visible on the message itself, so it is refused
at startup here, and again by the guarded backend before each send (workers never run
`manage.py check`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from .guard import (
    BATCH_SWITCHES,
    ESP_EXTRA_RECIPIENT_FIELDS,
    MERGE_ATTRIBUTES,
    field_key,
    smuggled_header_reason,
    walk_items,
)

GUARDED_BACKEND = "campaigns.backends.GuardedBackend"

# Anymail provider settings that send one API call to many recipients or show each
# recipient the whole list. Anymail reads them by truthiness, so the string "false"
# from an environment variable turns them on.
BATCH_MODE_SETTINGS = {
    "POSTMARK_USE_BULK_API": "Postmark's bulk API sends one request to a list of recipients",
    "MAILERSEND_BATCH_SEND_MODE": (
        "MailerSend's batch modes either expose the whole To list ('expose-to-list') "
        "or send one bulk request for many recipients ('use-bulk-email')"
    ),
}


def _anymail_settings() -> dict[str, tuple[str, Any]]:
    """Every anymail setting as name -> (where it is set, value), as anymail looks them up.

    Anymail reads settings.ANYMAIL["NAME"] first, then settings.ANYMAIL_NAME.
    """
    found: dict[str, tuple[str, Any]] = {}
    for attr in dir(settings):
        if attr.startswith("ANYMAIL_"):
            found[attr.removeprefix("ANYMAIL_")] = (attr, getattr(settings, attr))
    anymail = getattr(settings, "ANYMAIL", None) or {}
    if isinstance(anymail, dict):
        for key, value in anymail.items():
            found[str(key).upper()] = (f'ANYMAIL["{key}"]', value)
    return found


def _send_defaults_errors(where: str, defaults: Any) -> list[checks.CheckMessage]:
    if not isinstance(defaults, dict):
        return [checks.Error(f"{where} must be a dict.", id="countersign.E006")]
    errors: list[checks.CheckMessage] = []
    for key, value in defaults.items():
        field = field_key(key)
        if field in {"to", "cc", "bcc"}:
            errors.append(
                checks.Error(
                    f"{where} sets '{key}': anymail would add it to every message.",
                    hint="Remove it. Every message goes to exactly one person.",
                    id="countersign.E003",
                )
            )
        elif str(key) in MERGE_ATTRIBUTES:
            errors.append(
                checks.Error(
                    f"{where} sets '{key}': any merge attribute makes anymail send batches.",
                    hint="Remove it. Countersign renders each message itself.",
                    id="countersign.E004",
                )
            )
        elif field == "extra-headers" and isinstance(value, dict):
            for name, header_value in value.items():
                reason = smuggled_header_reason(name, header_value)
                if reason is not None:
                    errors.append(
                        checks.Error(
                            f"{where} extra_headers: {reason}.",
                            hint="Remove it. Every message goes to exactly one person.",
                            id="countersign.E003",
                        )
                    )
        elif field == "esp-extra":
            for name, _item in walk_items(value):
                if field_key(name) in ESP_EXTRA_RECIPIENT_FIELDS:
                    errors.append(
                        checks.Error(
                            f"{where} esp_extra sets '{name}', a recipient field.",
                            hint="Remove it. Every message goes to exactly one person.",
                            id="countersign.E003",
                        )
                    )
                elif field_key(name) in BATCH_SWITCHES:
                    errors.append(
                        checks.Error(
                            f"{where} esp_extra sets '{name}', a batch or expose-the-list switch.",
                            hint="Remove it.",
                            id="countersign.E005",
                        )
                    )
    return errors


def anymail_settings_errors() -> list[checks.CheckMessage]:
    """Errors for anymail settings that would add recipients or batch messages."""
    errors: list[checks.CheckMessage] = []
    for name, (where, value) in sorted(_anymail_settings().items()):
        if name == "SEND_DEFAULTS" or name.endswith("_SEND_DEFAULTS"):
            errors.extend(_send_defaults_errors(where, value))
        elif name in BATCH_MODE_SETTINGS and value:
            errors.append(
                checks.Error(
                    f"{where} is {value!r}: {BATCH_MODE_SETTINGS[name]}.",
                    hint="Remove the setting (any non-empty value, even 'false', turns it on).",
                    id="countersign.E005",
                )
            )
    return errors


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
        from .backends import GuardedBackend

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
