"""The one-recipient guard, layer by layer, against the three real transports.

For every layer: with only that layer enabled it blocks a bad message, and with no layer
enabled the same message really goes out through the same transport. So each of these
tests fails if its layer stops working. Then the whole guard against every bad message
and every transport, the system check, and a scan that keeps merge and cc/bcc names out
of the rest of the code.
"""

from __future__ import annotations

import email
import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from anymail.signals import pre_send
from django.conf import settings
from django.core import checks as django_checks
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.test import override_settings
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from audit.models import AuditEvent
from campaigns import checks
from campaigns.backends import GuardedBackend
from campaigns.guard import envelope, mail_settings
from campaigns.guard import layers as guard_layers
from campaigns.guard import message as message_layers
from campaigns.guard import provider as provider_layers
from campaigns.guard.vocabulary import GuardViolation
from tests.postmark_stub import POSTMARK_TRANSPORT, PostmarkStub, Reply

pytestmark = pytest.mark.django_db

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


# --- each layer alone blocks its case; without it the case goes out -----------------------

# (layer, bad message, transports on which that message really leaves without a guard)
LAYER_CASES = [
    ("recipients", "two_to", ["outbox", "smtp", "postmark"]),
    ("recipients", "cc", ["outbox", "smtp", "postmark"]),
    # The outbox writes the headers only, and Django never serializes Bcc: nothing to see.
    ("recipients", "bcc", ["smtp", "postmark"]),
    # Django's SMTP backend refuses to sanitize "a, b" as one address; the others send it.
    ("recipients", "comma_to", ["outbox", "postmark"]),
    ("recipients", "smuggled_cc", ["outbox", "smtp", "postmark"]),
    # Django's message() refuses line breaks itself; anymail's HTTP backends never call it.
    ("headers", "crlf_subject", ["postmark"]),
    ("headers", "crlf_header", ["postmark"]),
    ("merge", "merge_data", ["outbox", "smtp", "postmark"]),
    ("content", "foreign_address", ["outbox", "smtp", "postmark"]),
    ("smtp-envelope", "two_to", ["outbox", "smtp"]),
    ("smtp-envelope", "cc", ["outbox", "smtp"]),
    ("smtp-envelope", "bcc", ["smtp"]),
    ("smtp-envelope", "smuggled_cc", ["outbox", "smtp"]),
    ("anymail-payload", "two_to", ["postmark"]),
    ("anymail-payload", "cc", ["postmark"]),
    ("anymail-payload", "bcc", ["postmark"]),
    ("anymail-payload", "comma_to", ["postmark"]),
    ("anymail-payload", "merge_data", ["postmark"]),
    ("anymail-payload", "crlf_subject", ["postmark"]),
    ("anymail-payload", "crlf_header", ["postmark"]),
    ("anymail-payload", "smuggled_cc", ["postmark"]),
    ("anymail-payload", "bcc_send_default", ["postmark"]),
    ("settings", "bcc_send_default", ["postmark"]),
]


@pytest.mark.parametrize(
    ("layer", "case", "transport_name"),
    [
        pytest.param(layer, case, name, id=f"{layer}-{case}-{name}")
        for layer, case, names in LAYER_CASES
        for name in names
    ],
)
def test_layer_alone_blocks_what_would_otherwise_leave(
    layer: str,
    case: str,
    transport_name: str,
    only_layers: Callable[..., None],
    transport_factory: Callable[..., Transport],
    bob: User,
) -> None:
    anymail = BCC_SEND_DEFAULTS if case == "bcc_send_default" else {}
    transport = transport_factory(transport_name, **anymail)

    only_layers(layer)
    with pytest.raises(GuardViolation) as blocked:
        send(BAD_MESSAGES[case]())
    assert blocked.value.layer == layer
    assert transport.delivered() == []
    assert [event["layer"] for event in guard_events()] == [layer]

    only_layers()  # the same message, with no layer at all
    assert send(BAD_MESSAGES[case]()) == 1
    delivered = transport.delivered()
    assert len(delivered) >= 1
    if case == "merge_data":
        # Nothing of Bob's yet: what went out is a batch-capable message (for Postmark,
        # a post to the batch endpoint, which fans out to every To).
        if transport.stub is not None:
            assert [r.path for r in transport.stub.requests] == ["/email/batch"]
    else:
        leaked = [d for d in delivered if BOB in d.raw or BOB in d.recipients]
        assert leaked, f"{case} went out without {BOB} in it: {delivered!r}"


def test_post_send_layer_flags_a_provider_that_reports_two_recipients(
    stub: PostmarkStub, settings: SettingsWrapper, only_layers: Callable[..., None]
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings()
    stub.script(Reply.ok(to=f"{ANN}, {BOB}"))

    only_layers("post-send")
    with pytest.raises(GuardViolation) as flagged:
        send(delivery_message())
    assert flagged.value.layer == "post-send"
    assert flagged.value.sent is True  # it is a detector: the provider already has it
    assert len(stub.requests) == 1
    assert guard_events() == [
        {
            "layer": "post-send",
            "reason": flagged.value.reason,
            "delivery_id": 1,
            "campaign_id": 7,
            "sent": True,
            "transport": POSTMARK_TRANSPORT,
        }
    ]

    only_layers()
    stub.script(Reply.ok(to=f"{ANN}, {BOB}"))
    assert send(delivery_message()) == 1


def test_post_send_layer_accepts_the_provider_reporting_the_one_recipient(
    stub: PostmarkStub, settings: SettingsWrapper
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings()
    message = delivery_message()
    assert send(message) == 1
    assert set(message.anymail_status.recipients) == {ANN}  # type: ignore[attr-defined]
    provider_layers.require_provider_recipients(message)


def test_message_level_layers_cannot_see_a_bcc_from_send_defaults(
    stub: PostmarkStub, settings: SettingsWrapper
) -> None:
    settings.EMAIL_TRANSPORT = POSTMARK_TRANSPORT
    settings.ANYMAIL = stub.anymail_settings(**BCC_SEND_DEFAULTS)
    message = clean_message_with_bcc_send_default()
    for layer in guard_layers.PRE_SEND_LAYERS:
        layer(message)  # every message-level layer passes it
    envelope.require_single_smtp_envelope(message)

    preview = provider_layers.provider_payload_preview(message)
    assert preview is not None and json.loads(preview)["Bcc"] == BOB
    with pytest.raises(GuardViolation) as blocked:
        send(message)
    assert blocked.value.layer == "settings"
    assert stub.requests == []


# --- the whole guard: every bad message, every transport ------------------------------------


@pytest.mark.parametrize("transport_name", ["outbox", "smtp", "postmark"])
@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_guard_sends_nothing_for_a_bad_message(
    case: str,
    transport_name: str,
    transport_factory: Callable[..., Transport],
    bob: User,
) -> None:
    anymail = BCC_SEND_DEFAULTS if case == "bcc_send_default" else {}
    transport = transport_factory(transport_name, **anymail)
    with pytest.raises(GuardViolation) as blocked:
        send(BAD_MESSAGES[case]())
    assert transport.delivered() == []
    events = guard_events()
    assert len(events) == 1
    assert events[0]["layer"] == blocked.value.layer
    assert events[0]["delivery_id"] == 1 and events[0]["campaign_id"] == 7
    assert events[0]["sent"] is False


@pytest.mark.parametrize("transport_name", ["outbox", "smtp", "postmark"])
def test_guard_sends_a_good_message_to_exactly_its_recipient(
    transport_name: str, transport_factory: Callable[..., Transport], bob: User
) -> None:
    transport = transport_factory(transport_name)
    assert send(delivery_message()) == 1
    (delivered,) = transport.delivered()
    assert delivered.recipients == [ANN]
    assert BOB not in delivered.raw
    assert guard_events() == []


def test_smtp_sink_gets_exactly_one_rcpt_for_a_good_message(
    smtp_sink: SinkHandler, bob: User
) -> None:
    assert send(delivery_message()) == 1
    assert smtp_sink.rcpts == [ANN]
    parsed = email.message_from_string(smtp_sink.received[0].raw, policy=policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == [ANN]
    assert parsed["Cc"] is None and parsed["Bcc"] is None


@pytest.mark.parametrize(
    "display_name",
    [
        "Ann " * 30,  # folded across lines when serialized
        '"Smith, John"',
        "=?utf-8?b?Wm/DqyDDnG5hbA==?=",  # an encoded name, as rendering writes non-ASCII
    ],
)
def test_smtp_delivers_long_and_encoded_display_names_to_one_rcpt(
    display_name: str, smtp_sink: SinkHandler
) -> None:
    assert send(delivery_message(to=[f"{display_name.strip()} <{ANN}>"])) == 1
    assert smtp_sink.rcpts == [ANN]


def test_postmark_receives_one_recipient_in_the_posted_json(stub: PostmarkStub) -> None:
    with stub.configured():
        assert send(delivery_message()) == 1
    (posted,) = stub.requests
    assert posted.path == "/email"
    assert posted.json["To"] == f"Ann Example <{ANN}>"
    assert not {"Cc", "Bcc", "Messages"} & set(posted.json)
    assert posted.json["Metadata"] == {"delivery_id": "1", "campaign_id": "7"}


def test_one_bad_message_in_a_call_stops_the_whole_call(smtp_sink: SinkHandler, bob: User) -> None:
    with pytest.raises(GuardViolation):
        GuardedBackend().send_messages([delivery_message(), two_recipients_in_to()])
    assert smtp_sink.received == []


def test_fail_silently_does_not_silence_the_guard(outbox_dir: Path, bob: User) -> None:
    with pytest.raises(GuardViolation):
        send(second_recipient_in_bcc(), fail_silently=True)
    assert not outbox_dir.exists() or list(outbox_dir.iterdir()) == []
    assert len(guard_events()) == 1


def test_mail_that_is_not_a_campaign_delivery_also_needs_exactly_one_recipient(
    outbox_dir: Path, settings: SettingsWrapper
) -> None:
    settings.EMAIL_BACKEND = GUARDED
    notice = EmailMessage(
        "Review requested", "Campaign 7 awaits you.", SENDER, ["rita@example.com"]
    )
    assert notice.send() == 1
    with pytest.raises(GuardViolation) as blocked:
        EmailMessage(
            "Review requested", "x", SENDER, ["rita@example.com", "root@example.com"]
        ).send()
    assert blocked.value.layer == "recipients"
    assert blocked.value.delivery_id is None
    assert len(list(outbox_dir.iterdir())) == 1


def test_the_connection_is_reused_across_messages(smtp_sink: SinkHandler, bob: User) -> None:
    with get_connection(GUARDED) as connection:
        for _ in range(3):
            assert connection.send_messages([delivery_message()]) == 1
    assert len(smtp_sink.received) == 3
    assert len(smtp_sink.sessions) == 1


def test_the_payload_is_checked_again_when_it_is_posted(stub: PostmarkStub, bob: User) -> None:
    """A pre_send receiver that adds a bcc after the checks is caught at the post itself."""

    def add_bcc(sender: Any, message: EmailMessage, **kwargs: Any) -> None:
        message.bcc = [BOB]

    pre_send.connect(add_bcc, weak=False)
    try:
        with stub.configured(), pytest.raises(GuardViolation) as blocked:
            send(delivery_message())
    finally:
        pre_send.disconnect(add_bcc)
    assert blocked.value.layer == "anymail-payload"
    assert stub.requests == []
    assert [event["layer"] for event in guard_events()] == ["anymail-payload"]


class RecipientsChangeAfterTheCheck(DeliveryMessage):
    """Reports one recipient when the guard first asks, two when the transport asks."""

    calls = 0

    def recipients(self) -> list[str]:
        self.calls += 1
        return [ANN] if self.calls == 1 else [ANN, BOB]


def test_the_smtp_envelope_is_checked_again_at_sendmail(smtp_sink: SinkHandler) -> None:
    message = RecipientsChangeAfterTheCheck(
        "Update", "Hello", SENDER, [ANN], headers={"Message-ID": "<x@countersign.test>"}
    )
    message.expected_recipient = ANN
    with pytest.raises(GuardViolation) as blocked:
        send(message)
    assert blocked.value.layer == "smtp-envelope"
    assert "2 recipients" in blocked.value.reason
    assert smtp_sink.rcpts == []


# --- layer details -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "to",
    [
        f"alice@example.net <{ANN}>",  # getaddresses reads two, the modern parser one
        f"{ANN} <{BOB}>",
        f"{ANN}; {BOB}",
        f"<{ANN}> {BOB}",
        f"{ANN}@evil.example",
        "Smith, John <ann@example.org>",  # an unquoted comma: two recipients to some parsers
        f"{ANN}\n",
        "",
    ],
)
def test_recipients_layer_refuses_a_to_that_any_parser_reads_differently(to: str) -> None:
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_single_recipient(delivery_message(to=[to]))
    assert blocked.value.layer == "recipients"


def test_recipients_layer_accepts_a_quoted_display_name_with_a_comma() -> None:
    message_layers.require_single_recipient(delivery_message(to=[f'"Smith, John" <{ANN}>']))
    message_layers.require_single_recipient(delivery_message(to=[f'"Zoë Ünal" <{ANN.upper()}>']))


def test_an_internationalized_domain_matches_its_punycode_form_on_the_wire() -> None:
    message = delivery_message(to=["Ann <ann@xn--bcher-kva.example>"])
    message.expected_recipient = "ann@bücher.example"
    message_layers.require_single_recipient(message)
    envelope.require_single_smtp_envelope(message)


def test_recipients_layer_refuses_an_address_other_than_the_deliverys() -> None:
    message = delivery_message(to=[BOB])
    with pytest.raises(GuardViolation, match="the delivery is for"):
        message_layers.require_single_recipient(message)


@pytest.mark.parametrize(
    "header",
    [
        "To",
        "to",
        "Bcc",
        "Resent-To",
        "Resent-Cc",
        "Resent-Bcc",
        "Resent-From",
        "X-SMTPAPI",
        "X-Contact",
    ],
)
def test_recipients_layer_refuses_address_headers_smuggled_in_extra_headers(header: str) -> None:
    message = delivery_message(headers={header: BOB})
    with pytest.raises(GuardViolation, match="header"):
        message_layers.require_single_recipient(message)


def test_recipients_layer_allows_sender_and_unsubscribe_headers() -> None:
    message = delivery_message(
        headers={
            "Reply-To": "support@countersign.test",
            "Sender": SENDER,
            "List-Unsubscribe": "<https://example.test/u/abc>, <mailto:unsubscribe@countersign.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    )
    message_layers.require_single_recipient(message)


def test_recipients_layer_refuses_recipients_in_esp_extra() -> None:
    message = delivery_message()
    message.esp_extra = {"Bcc": BOB}  # type: ignore[attr-defined]
    with pytest.raises(GuardViolation, match="esp_extra"):
        message_layers.require_single_recipient(message)


@pytest.mark.parametrize(
    "attr", ["merge_data", "merge_metadata", "merge_headers", "merge_global_data"]
)
@pytest.mark.parametrize("value", [{}, None, {ANN: {"name": "Ann"}}])
def test_merge_layer_refuses_any_merge_attribute_even_empty(attr: str, value: object) -> None:
    message = delivery_message()
    setattr(message, attr, value)
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_no_merge(message)
    assert blocked.value.layer == "merge"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\nb"},
        {"X-Note": "a\rb"},
        {"X-Note": "a\u2028b"},
        {"X-Note": "a\x00b"},
        {"X-Bad\nName": "a"},
        {"X Space": "a"},
    ],
)
def test_headers_layer_refuses_line_breaks_and_bad_header_names(headers: dict[str, str]) -> None:
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_clean_headers(delivery_message(headers=headers))
    assert blocked.value.layer == "headers"


def test_headers_layer_refuses_a_line_break_in_metadata() -> None:
    message = delivery_message()
    message.metadata = {"campaign_id": "7\r\nBcc: bob@example.org"}
    with pytest.raises(GuardViolation, match="line break"):
        message_layers.require_clean_headers(message)


@pytest.mark.parametrize(
    "where",
    [
        "subject",
        "body",
        "html",
        "html_entity",
        "mailto_escaped",
        "display_name",
        "attachment",
    ],
)
def test_content_layer_refuses_another_users_address(where: str, bob: User) -> None:
    message = delivery_message()
    if where == "subject":
        message.subject = f"News from {BOB.upper()}"
    elif where == "body":
        message.body += BOB
    elif where == "html":
        message.alternatives = [(f'<a href="mailto:{BOB}">write</a>', "text/html")]
    elif where == "html_entity":
        message.alternatives = [("<p>bob&#64;example.org</p>", "text/html")]
    elif where == "mailto_escaped":
        message.alternatives = [('<a href="mailto:bob%40example.org">x</a>', "text/html")]
    elif where == "display_name":
        message.to = [f'"{BOB}" <{ANN}>']
    else:
        message.attach("audience.csv", f"email\n{BOB}\n", "text/csv")
    with pytest.raises(GuardViolation) as blocked:
        message_layers.require_no_foreign_addresses(message)
    assert blocked.value.layer == "content"
    assert BOB in blocked.value.reason


def test_content_layer_allows_own_sender_unsubscribe_and_non_user_addresses(
    bob: User, settings: SettingsWrapper, django_assert_num_queries: Any
) -> None:
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@countersign.test"
    message = delivery_message()
    message.body += (
        f"You are {ANN.upper()}. Write to {SENDER}, support@countersign.test, "
        "unsubscribe@countersign.test or press@elsewhere.example.\n"
    )
    with django_assert_num_queries(1):
        message_layers.require_no_foreign_addresses(message)
    with django_assert_num_queries(0):
        message_layers.require_no_foreign_addresses(delivery_message())


def test_smtp_envelope_layer_checks_real_sendmail_arguments() -> None:
    message = delivery_message()
    raw = message.message().as_bytes(linesep="\r\n")
    envelope.require_single_smtp_envelope(message, envelope=[ANN], raw=raw)
    with pytest.raises(GuardViolation, match="2 recipients"):
        envelope.require_single_smtp_envelope(message, envelope=[ANN, BOB], raw=raw)
    with pytest.raises(GuardViolation, match="the delivery is for"):
        envelope.require_single_smtp_envelope(message, envelope=[BOB], raw=raw)
    with pytest.raises(GuardViolation, match="smtplib sends"):
        # smtplib's lenient parseaddr would RCPT only Ann; getaddresses sees Bob too.
        envelope.require_single_smtp_envelope(message, envelope=[f"{ANN} <{BOB}>"], raw=raw)
    with_bcc_header = raw.replace(b"\r\nTo:", f"\r\nBcc: {BOB}\r\nTo:".encode(), 1)
    with pytest.raises(GuardViolation, match="serialized recipient headers"):
        envelope.require_single_smtp_envelope(message, envelope=[ANN], raw=with_bcc_header)


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


# --- nobody else may name merge attributes, cc or bcc --------------------------------------

FORBIDDEN_NAMES = re.compile(
    r"\bmerge_(?:data|metadata|headers|global_data)\b|\bb?cc\s*=(?!=)|\.b?cc\b"
)
# The guard is the one place that names them: to refuse them.
ALLOWED_DIR = Path("campaigns/guard")
SKIPPED_DIRS = {".venv", "var", "tests", "node_modules", "staticfiles", ".git"}


def test_no_other_code_names_merge_attributes_cc_or_bcc() -> None:
    root = Path(settings.BASE_DIR)
    offenders = []
    scanned = 0
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if SKIPPED_DIRS & set(relative.parts) or relative.is_relative_to(ALLOWED_DIR):
            continue
        scanned += 1
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if FORBIDDEN_NAMES.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert scanned > 10  # the walk really covered the project
    assert offenders == []


@pytest.mark.parametrize(
    "line",
    ["message.merge_data = {}", "EmailMessage(cc=[x])", "msg.bcc.append(x)", "bcc = []", "m.cc"],
)
def test_the_forbidden_names_pattern_catches_what_it_should(line: str) -> None:
    assert FORBIDDEN_NAMES.search(line)


@pytest.mark.parametrize("line", ["success = True", "if acc == 1:", "x.accent", "bcc == y"])
def test_the_forbidden_names_pattern_ignores_lookalikes(line: str) -> None:
    assert not FORBIDDEN_NAMES.search(line)
