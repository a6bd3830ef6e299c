"""The guard's test kit: messages good and bad, the three real transports, layer narrowing.

Shared by every module of tests/guard/ (helpers are imported from here, fixtures found
by pytest).
"""

from __future__ import annotations

import email
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.core.mail import EmailMessage, EmailMultiAlternatives
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from audit.models import AuditEvent
from campaigns.backends import GuardedBackend
from campaigns.guard import envelope, mail_settings
from campaigns.guard import layers as guard_layers
from campaigns.guard import message as message_layers
from campaigns.guard import provider as provider_layers
from tests.postmark_stub import POSTMARK_TRANSPORT, PostmarkStub

ANN = "ann@example.org"
BOB = "bob@example.org"
SENDER = "news@countersign.test"
GUARDED = "campaigns.backends.GuardedBackend"
SMTP_TRANSPORT = "django.core.mail.backends.smtp.EmailBackend"
OUTBOX_TRANSPORT = "campaigns.backends.OutboxBackend"


class DeliveryMessage(EmailMultiAlternatives):
    """What campaigns.rendering builds: a message that knows its one recipient."""

    expected_recipient: str
    delivery_id: int | None
    campaign_id: int
    metadata: dict[str, str]


def delivery_message(**fields: Any) -> DeliveryMessage:
    message = DeliveryMessage(
        subject=fields.pop("subject", "Service update"),
        body="Hello Ann,\nthe service changes on Monday.\n",
        from_email=f"Countersign News <{SENDER}>",
        to=fields.pop("to", [f"Ann Example <{ANN}>"]),
        reply_to=["support@countersign.test"],
        headers={"Message-ID": "<d1.c7@countersign.test>", **fields.pop("headers", {})},
        **fields,
    )
    message.attach_alternative(
        "<p>Hello Ann,</p><p>the service changes on Monday.</p>", "text/html"
    )
    message.expected_recipient = ANN
    message.delivery_id = 1
    message.campaign_id = 7
    message.metadata = {"delivery_id": "1", "campaign_id": "7"}
    return message


# --- the bad messages ----------------------------------------------------------------------


def two_recipients_in_to() -> EmailMessage:
    return delivery_message(to=[ANN, BOB])


def second_recipient_in_cc() -> EmailMessage:
    return delivery_message(cc=[BOB])


def second_recipient_in_bcc() -> EmailMessage:
    return delivery_message(bcc=[BOB])


def comma_joined_to_string() -> EmailMessage:
    return delivery_message(to=[f"{ANN}, {BOB}"])


def empty_merge_data() -> EmailMessage:
    message = delivery_message()
    message.merge_data = {}  # type: ignore[attr-defined]
    return message


def line_break_in_subject() -> EmailMessage:
    return delivery_message(subject=f"Update\r\nBcc: {BOB}")


def line_break_in_extra_header() -> EmailMessage:
    return delivery_message(headers={"X-Campaign": f"7\r\nBcc: {BOB}"})


def cc_smuggled_in_extra_headers() -> EmailMessage:
    return delivery_message(headers={"Cc": BOB})


def foreign_address_in_body() -> EmailMessage:
    message = delivery_message()
    message.body += f"\nQuestions? Ask {BOB}.\n"
    return message


def clean_message_with_bcc_send_default() -> EmailMessage:
    # The message is clean; the bcc comes from ANYMAIL["POSTMARK_SEND_DEFAULTS"].
    return delivery_message()


BAD_MESSAGES: dict[str, Callable[[], EmailMessage]] = {
    "two_to": two_recipients_in_to,
    "cc": second_recipient_in_cc,
    "bcc": second_recipient_in_bcc,
    "comma_to": comma_joined_to_string,
    "merge_data": empty_merge_data,
    "crlf_subject": line_break_in_subject,
    "crlf_header": line_break_in_extra_header,
    "smuggled_cc": cc_smuggled_in_extra_headers,
    "foreign_address": foreign_address_in_body,
    "bcc_send_default": clean_message_with_bcc_send_default,
}
BCC_SEND_DEFAULTS = {"POSTMARK_SEND_DEFAULTS": {"bcc": [BOB]}}


# --- the transports ----------------------------------------------------------------------


@dataclass
class Delivered:
    """One message as the transport's far end received it."""

    recipients: list[str]  # RCPT TO, or the To/Cc/Bcc fields the provider got
    raw: str


class SinkHandler:
    """aiosmtpd handler that keeps every envelope."""

    def __init__(self) -> None:
        self.received: list[Delivered] = []
        self.rcpts: list[str] = []
        self.sessions: set[int] = set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpts.append(address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sessions.add(id(session))
        content = envelope.content
        raw = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        self.received.append(Delivered(list(envelope.rcpt_tos), raw))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_sink(settings: SettingsWrapper) -> Iterator[SinkHandler]:
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings.EMAIL_TRANSPORT = SMTP_TRANSPORT
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 10
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def outbox_dir(settings: SettingsWrapper, tmp_path: Path) -> Path:
    settings.EMAIL_TRANSPORT = OUTBOX_TRANSPORT
    settings.OUTBOX_DIR = tmp_path / "outbox"
    return Path(settings.OUTBOX_DIR)


@pytest.fixture
def stub() -> Iterator[PostmarkStub]:
    with PostmarkStub() as running:
        yield running


def _addresses(value: object) -> list[str]:
    return [addr for _name, addr in getaddresses([str(value)]) if addr] if value else []


class Transport:
    """One transport under test and a uniform view of what its far end received."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.request = request
        self.sink: SinkHandler | None = None
        self.outbox: Path | None = None
        self.stub: PostmarkStub | None = None
        if name == "smtp":
            self.sink = request.getfixturevalue("smtp_sink")
        elif name == "outbox":
            self.outbox = request.getfixturevalue("outbox_dir")
        else:
            self.stub = request.getfixturevalue("stub")

    def configure(self, settings: SettingsWrapper, **anymail: Any) -> None:
        if self.stub is not None:
            settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
            settings.ANYMAIL = self.stub.anymail_settings(**anymail)
        else:
            settings.ANYMAIL = dict(anymail)

    def delivered(self) -> list[Delivered]:
        if self.sink is not None:
            return list(self.sink.received)
        if self.outbox is not None:
            files = sorted(self.outbox.glob("*")) if self.outbox.exists() else []
            result = []
            for path in files:
                parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
                recipients = [
                    addr
                    for name in ("To", "Cc", "Bcc")
                    for header in parsed.get_all(name) or []
                    for addr in _addresses(header)
                ]
                result.append(Delivered(recipients, path.read_text("utf-8", "replace")))
            return result
        assert self.stub is not None
        result = []
        for posted in self.stub.requests:
            bodies = posted.json if isinstance(posted.json, list) else [posted.json]
            if isinstance(posted.json, dict) and "Messages" in posted.json:
                bodies = posted.json["Messages"]
            for body in bodies:
                recipients = [
                    a for field in ("To", "Cc", "Bcc") for a in _addresses(body.get(field))
                ]
                result.append(Delivered(recipients, json.dumps(body)))
        return result


@pytest.fixture
def transport_factory(
    request: pytest.FixtureRequest, settings: SettingsWrapper
) -> Callable[..., Transport]:
    def make(name: str, **anymail: Any) -> Transport:
        transport = Transport(name, request)
        transport.configure(settings, **anymail)
        return transport

    return make


# --- narrowing the guard to chosen layers --------------------------------------------------

REGISTRIES = (
    "PRE_SEND_LAYERS",
    "SETTINGS_LAYERS",
    "ANYMAIL_PAYLOAD_LAYERS",
    "SMTP_ENVELOPE_LAYERS",
    "POST_SEND_LAYERS",
)
LAYERS: dict[str, Callable[..., None]] = {
    "recipients": message_layers.require_single_recipient,
    "headers": message_layers.require_clean_headers,
    "merge": message_layers.require_no_merge,
    "content": message_layers.require_no_foreign_addresses,
    "settings": mail_settings.require_safe_mail_settings,
    "anymail-payload": provider_layers.require_single_recipient_anymail_payload,
    "smtp-envelope": envelope.require_single_smtp_envelope,
    "post-send": provider_layers.require_provider_recipients,
}


@pytest.fixture
def only_layers(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Enable only the named layers (none: the guard checks nothing)."""
    originals = {name: list(getattr(guard_layers, name)) for name in REGISTRIES}

    def narrow(*names: str) -> None:
        keep = {LAYERS[name] for name in names}
        for registry, layers in originals.items():
            monkeypatch.setattr(
                guard_layers, registry, [layer for layer in layers if layer in keep]
            )

    return narrow


@pytest.fixture
def bob(make_member: Callable[..., User]) -> User:
    make_member(ANN, first_name="Ann")
    return make_member(BOB, first_name="Bob")


def send(message: EmailMessage, **kwargs: Any) -> int:
    return GuardedBackend(**kwargs).send_messages([message])


def guard_events() -> list[dict[str, Any]]:
    return [event.data for event in AuditEvent.objects.filter(action="guard.blocked")]
