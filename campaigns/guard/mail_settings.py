"""Settings rules: no anymail setting may add recipients or switch on a batch mode.

Anymail merges SEND_DEFAULTS into every payload, so a default `bcc` copies every
message to someone, a default merge attribute turns every send into a batch, and the
providers' batch modes (Postmark's bulk API, MailerSend's "expose-to-list") send one
payload to many people. None of that is visible on the message itself, so it is refused
at startup by the system check, and again by the guarded backend before each send
(workers never run `manage.py check`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.signals import setting_changed
from django.dispatch import receiver

from .vocabulary import (
    BATCH_SWITCHES,
    ESP_EXTRA_RECIPIENT_FIELDS,
    MERGE_ATTRIBUTES,
    GuardViolation,
    field_key,
    smuggled_header_reason,
    walk_items,
)

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

ONE_PERSON_HINT = "Remove it. Every message goes to exactly one person."


# The names of the ANYMAIL_* settings, with the layout of the settings they were read
# from. Listing every setting (`dir`) was most of this layer's cost, paid twice per
# message; the values are still read on every call.
_names: tuple[Any, tuple[str, ...]] | None = None


def _settings_layout() -> tuple[tuple[int, int], ...]:
    """Which settings objects answer, and how many names each holds: a setting added or
    removed without `override_settings` (which also sends `setting_changed`) changes it."""
    layout: list[tuple[int, int]] = []
    holder: Any = getattr(settings, "_wrapped", None)
    while holder is not None and len(layout) < 64:
        layout.append((id(holder), len(vars(holder)) + len(getattr(holder, "_deleted", ()))))
        holder = getattr(holder, "default_settings", None)
    return tuple(layout)


def _anymail_setting_names() -> tuple[str, ...]:
    global _names
    layout = _settings_layout()
    if _names is None or _names[0] != layout:
        names = tuple(attr for attr in dir(settings) if attr.startswith("ANYMAIL_"))
        _names = (layout, names)
    return _names[1]


@receiver(setting_changed)
def _forget_setting_names(**kwargs: Any) -> None:
    global _names
    _names = None


def _anymail_settings() -> dict[str, tuple[str, Any]]:
    """Every anymail setting as name -> (where it is set, value), as anymail looks them up.

    Anymail reads settings.ANYMAIL["NAME"] first, then settings.ANYMAIL_NAME.
    """
    found: dict[str, tuple[str, Any]] = {}
    for attr in _anymail_setting_names():
        if hasattr(settings, attr):
            found[attr.removeprefix("ANYMAIL_")] = (attr, getattr(settings, attr))
    anymail = getattr(settings, "ANYMAIL", None) or {}
    if isinstance(anymail, dict):
        for key, value in anymail.items():
            found[str(key).upper()] = (f'ANYMAIL["{key}"]', value)
    return found


def _adds_recipients(text: str) -> checks.CheckMessage:
    return checks.Error(text, hint=ONE_PERSON_HINT, id="countersign.E003")


def _send_defaults_errors(where: str, defaults: Any) -> list[checks.CheckMessage]:
    if not isinstance(defaults, dict):
        return [checks.Error(f"{where} must be a dict.", id="countersign.E006")]
    errors: list[checks.CheckMessage] = []
    for key, value in defaults.items():
        field = field_key(key)
        if field in {"to", "cc", "bcc"}:
            errors.append(
                _adds_recipients(f"{where} sets '{key}': anymail would add it to every message.")
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
                    errors.append(_adds_recipients(f"{where} extra_headers: {reason}."))
        elif field == "esp-extra":
            for name, _item in walk_items(value):
                if field_key(name) in ESP_EXTRA_RECIPIENT_FIELDS:
                    errors.append(
                        _adds_recipients(f"{where} esp_extra sets '{name}', a recipient field.")
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


def require_safe_mail_settings() -> None:
    """The anymail settings the system check refuses, refused again when sending."""
    errors = anymail_settings_errors()
    if errors:
        raise GuardViolation("settings", "; ".join(str(error.msg) for error in errors))
