"""The settings rules: the system check and the backend refuse anymail settings that add recipients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core import checks as django_checks
from django.test import override_settings
from pytest_django.fixtures import Settings as SettingsWrapper

from campaigns import checks
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    BOB,
    GUARDED,
    OUTBOX_TRANSPORT,
    SMTP_TRANSPORT,
    delivery_message,
    send,
)
from tests.postmark_stub import POSTMARK_TRANSPORT

pytestmark = pytest.mark.django_db


# --- the system check ---------------------------------------------------------------------


@pytest.fixture
def clean_mail_settings(settings: SettingsWrapper) -> SettingsWrapper:
    settings.EMAIL_BACKEND = GUARDED  # the test runner swaps in locmem
    settings.EMAIL_TRANSPORT = OUTBOX_TRANSPORT
    settings.ANYMAIL = {}
    return settings


def check_ids() -> list[str]:
    return [message.id or "" for message in checks.check_mail_guard()]


def test_system_check_passes_the_shipped_configuration(
    clean_mail_settings: SettingsWrapper,
) -> None:
    assert check_ids() == []


def test_system_check_is_registered(clean_mail_settings: SettingsWrapper) -> None:
    clean_mail_settings.EMAIL_BACKEND = SMTP_TRANSPORT
    ids = [message.id for message in django_checks.run_checks()]
    assert "countersign.E001" in ids


def test_system_check_refuses_a_backend_that_is_not_the_guard(
    clean_mail_settings: SettingsWrapper,
) -> None:
    clean_mail_settings.EMAIL_BACKEND = POSTMARK_TRANSPORT
    assert check_ids() == ["countersign.E001"]


@pytest.mark.parametrize("transport", [GUARDED, "campaigns.backends.NoSuchBackend", ""])
def test_system_check_refuses_a_transport_that_is_not_a_real_backend(
    transport: str, clean_mail_settings: SettingsWrapper
) -> None:
    clean_mail_settings.EMAIL_TRANSPORT = transport
    assert check_ids() == ["countersign.E002"]


FORBIDDEN_ANYMAIL = [
    ({"SEND_DEFAULTS": {"to": [BOB]}}, "countersign.E003"),
    ({"SEND_DEFAULTS": {"cc": [BOB]}}, "countersign.E003"),
    ({"SEND_DEFAULTS": {"bcc": [BOB]}}, "countersign.E003"),
    ({"POSTMARK_SEND_DEFAULTS": {"bcc": [BOB]}}, "countersign.E003"),
    ({"SENDGRID_SEND_DEFAULTS": {"to": [BOB]}}, "countersign.E003"),
    ({"SEND_DEFAULTS": {"extra_headers": {"Bcc": BOB}}}, "countersign.E003"),
    ({"SEND_DEFAULTS": {"esp_extra": {"personalizations": []}}}, "countersign.E003"),
    ({"POSTMARK_SEND_DEFAULTS": {"esp_extra": {"Cc": BOB}}}, "countersign.E003"),
    ({"SEND_DEFAULTS": {"merge_data": {}}}, "countersign.E004"),
    ({"SEND_DEFAULTS": {"merge_metadata": {}}}, "countersign.E004"),
    ({"SEND_DEFAULTS": {"merge_headers": {}}}, "countersign.E004"),
    ({"MAILGUN_SEND_DEFAULTS": {"merge_global_data": {}}}, "countersign.E004"),
    ({"POSTMARK_USE_BULK_API": True}, "countersign.E005"),
    ({"POSTMARK_USE_BULK_API": "false"}, "countersign.E005"),  # a string from the environment
    ({"MAILERSEND_BATCH_SEND_MODE": "expose-to-list"}, "countersign.E005"),
    ({"MAILERSEND_BATCH_SEND_MODE": "use-bulk-email"}, "countersign.E005"),
    (
        {"MANDRILL_SEND_DEFAULTS": {"esp_extra": {"message": {"preserve_recipients": True}}}},
        "countersign.E005",
    ),
    (
        {"MAILERSEND_SEND_DEFAULTS": {"esp_extra": {"batch_send_mode": "expose-to-list"}}},
        "countersign.E005",
    ),
    ({"SEND_DEFAULTS": ["bcc"]}, "countersign.E006"),
]


@pytest.mark.parametrize(("anymail", "error_id"), FORBIDDEN_ANYMAIL, ids=lambda v: str(v)[:60])
def test_system_check_refuses_anymail_settings_that_add_recipients_or_batch(
    anymail: dict[str, Any], error_id: str, clean_mail_settings: SettingsWrapper
) -> None:
    clean_mail_settings.ANYMAIL = anymail
    assert check_ids() == [error_id]


def test_system_check_reads_top_level_anymail_settings_too(
    clean_mail_settings: SettingsWrapper,
) -> None:
    clean_mail_settings.ANYMAIL_SEND_DEFAULTS = {"bcc": [BOB]}
    assert check_ids() == ["countersign.E003"]


def test_system_check_accepts_harmless_send_defaults(clean_mail_settings: SettingsWrapper) -> None:
    clean_mail_settings.ANYMAIL = {
        "SEND_DEFAULTS": {"tags": ["countersign"], "track_clicks": False},
        "POSTMARK_SEND_DEFAULTS": {"esp_extra": {"MessageStream": "broadcast"}},
        "POSTMARK_USE_BULK_API": False,
    }
    assert check_ids() == []


@pytest.mark.parametrize(
    "anymail",
    [{"POSTMARK_SEND_DEFAULTS": {"bcc": [BOB]}}, {"POSTMARK_USE_BULK_API": True}],
)
def test_guarded_backend_refuses_to_send_with_unsafe_anymail_settings(
    anymail: dict[str, Any], outbox_dir: Path
) -> None:
    # Workers never run `manage.py check`; the backend repeats it.
    with override_settings(ANYMAIL=anymail), pytest.raises(GuardViolation) as blocked:
        send(delivery_message())
    assert blocked.value.layer == "settings"
    assert not outbox_dir.exists()


def test_a_setting_added_after_a_send_is_refused_at_the_next(outbox_dir: Path) -> None:
    # The layer remembers which ANYMAIL_* names exist (listing every setting is its
    # dearest part); a name that appears later, however it appears, is still read.
    send(delivery_message())
    with override_settings(ANYMAIL_POSTMARK_USE_BULK_API=True), pytest.raises(GuardViolation):
        send(delivery_message())
    send(delivery_message())  # gone again with the override

    from django.conf import settings as live

    name = "ANYMAIL_SEND_DEFAULTS"
    defaults: dict[str, list[str]] = {"bcc": [BOB]}
    setattr(live, name, defaults)  # assigned directly: no setting_changed signal
    try:
        with pytest.raises(GuardViolation) as blocked:
            send(delivery_message())
        assert blocked.value.layer == "settings"
        # Values are read on every call: a change inside the dict counts at once.
        defaults["bcc"] = []
        defaults["cc"] = [BOB]
        with pytest.raises(GuardViolation):
            send(delivery_message())
    finally:
        delattr(live, name)
    send(delivery_message())
