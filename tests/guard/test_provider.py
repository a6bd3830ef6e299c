"""The provider layers: anymail payloads of every HTTP provider, the preview and pre-flight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.mail import get_connection
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from campaigns.guard import layers as guard_layers
from campaigns.guard import provider as provider_layers
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    ANN,
    BOB,
    OUTBOX_TRANSPORT,
    SMTP_TRANSPORT,
    delivery_message,
    send,
)
from tests.postmark_stub import POSTMARK_TRANSPORT, PostmarkStub

pytestmark = pytest.mark.django_db


# Anymail's other HTTP providers: the generic payload check reads their own payloads.
OTHER_PROVIDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "mailgun": ("anymail.backends.mailgun.EmailBackend", {"MAILGUN_API_KEY": "k"}),
    "sendgrid": ("anymail.backends.sendgrid.EmailBackend", {"SENDGRID_API_KEY": "k"}),
    "mailjet": (
        "anymail.backends.mailjet.EmailBackend",
        {"MAILJET_API_KEY": "k", "MAILJET_SECRET_KEY": "s"},
    ),
    "sparkpost": ("anymail.backends.sparkpost.EmailBackend", {"SPARKPOST_API_KEY": "k"}),
    "mandrill": ("anymail.backends.mandrill.EmailBackend", {"MANDRILL_API_KEY": "k"}),
    "brevo": ("anymail.backends.brevo.EmailBackend", {"BREVO_API_KEY": "k"}),
    "resend": ("anymail.backends.resend.EmailBackend", {"RESEND_API_KEY": "k"}),
    "mailersend": (
        "anymail.backends.mailersend.EmailBackend",
        # MailerSend has no metadata; the check is about recipients, so let anymail skip it.
        {"MAILERSEND_API_TOKEN": "k", "IGNORE_UNSUPPORTED_FEATURES": True},
    ),
}


def _esp_prefix(transport: Any) -> str:
    return str(transport.esp_name).upper().replace(" ", "_")


@pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning")
@pytest.mark.parametrize("provider", sorted(OTHER_PROVIDERS))
def test_generic_payload_check_reads_other_providers_payloads(
    provider: str, settings: SettingsWrapper
) -> None:
    path, anymail = OTHER_PROVIDERS[provider]
    settings.ANYMAIL = anymail
    transport = get_connection(path)
    message = delivery_message()
    payload = provider_layers.build_provider_payload(message, transport)
    provider_layers.require_single_recipient_anymail_payload(payload, message)

    settings.ANYMAIL = {**anymail, f"{_esp_prefix(transport)}_SEND_DEFAULTS": {"bcc": [BOB]}}
    transport = get_connection(path)
    payload = provider_layers.build_provider_payload(message, transport)
    with pytest.raises(GuardViolation) as blocked:
        provider_layers.require_single_recipient_anymail_payload(payload, message)
    assert blocked.value.layer == "anymail-payload"
    assert BOB in blocked.value.reason


def test_postmark_payload_check_refuses_the_bulk_api(settings: SettingsWrapper) -> None:
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "t", "POSTMARK_USE_BULK_API": True}
    transport = get_connection(POSTMARK_TRANSPORT)
    message = delivery_message()
    with pytest.raises(GuardViolation, match="BULK"):
        provider_layers.require_single_recipient_anymail_payload(
            provider_layers.build_provider_payload(message, transport), message
        )


# --- preview and pre-flight -------------------------------------------------------------------


def test_payload_preview_is_the_json_postmark_would_receive(
    stub: PostmarkStub, settings: SettingsWrapper
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings(POSTMARK_SEND_DEFAULTS={"tags": ["announcement"]})
    message = delivery_message()
    preview = provider_layers.provider_payload_preview(message)
    assert preview is not None
    assert stub.requests == []  # built, not sent
    assert send(delivery_message()) == 1
    assert json.loads(preview) == stub.requests[0].json
    assert json.loads(preview)["Tag"] == "announcement"  # SEND_DEFAULTS are in it
    assert "\n  " in preview  # pretty-printed


def test_payload_preview_is_none_for_the_outbox_and_smtp(settings: SettingsWrapper) -> None:
    for transport in (OUTBOX_TRANSPORT, SMTP_TRANSPORT):
        settings.EMAIL_TRANSPORT = transport
        assert provider_layers.provider_payload_preview(delivery_message()) is None


def test_payload_preview_redacts_credentials_in_the_body(settings: SettingsWrapper) -> None:
    settings.EMAIL_TRANSPORT = "anymail.backends.mandrill.EmailBackend"
    settings.ANYMAIL = {"MANDRILL_API_KEY": "very-secret-key"}
    preview = provider_layers.provider_payload_preview(delivery_message())
    assert preview is not None
    assert "very-secret-key" not in preview
    assert json.loads(preview)["key"] == "[redacted]"


def test_preflight_lists_every_violation_without_sending(outbox_dir: Path, bob: User) -> None:
    message = delivery_message(to=[ANN, BOB])
    message.body += BOB
    layers = {violation.layer for violation in guard_layers.preflight(message)}
    assert layers == {"recipients", "content", "smtp-envelope"}
    assert guard_layers.preflight(delivery_message()) == []
    assert not outbox_dir.exists()
