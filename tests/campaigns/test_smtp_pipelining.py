"""The SMTP transport pipelines MAIL FROM, RCPT TO and DATA, and fails as smtplib does."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.mail import EmailMessage
from pytest_django.fixtures import Settings as SettingsWrapper

from campaigns.backends import GuardedBackend
from campaigns.guard.addresses import message_bytes
from campaigns.guard.vocabulary import GuardViolation
from campaigns.models import Delivery
from campaigns.smtp import PipeliningSMTP, SMTPTransport
from campaigns.worker import classify_failure
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db


class Refusing:
    """A sink handler's hooks that refuse one sender and one recipient."""

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == "banned@example.com":
            return "550 5.7.1 sender refused"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == "nobody@example.net":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def _point_at(settings: SettingsWrapper, sink: SmtpSink) -> None:
    for name, value in sink.django_settings().items():
        setattr(settings, name, value)
    settings.EMAIL_TIMEOUT = 10


def _message(to: str, *, body: str = "Hello.\n", from_email: str = "news@example.com") -> Any:
    # Fixed Date and Message-ID, so the bytes can be made again to compare.
    headers = {"Date": "Tue, 04 Mar 2025 09:30:15 -0000", "Message-ID": f"<{to}.1@example.com>"}
    return EmailMessage("Spring news", body, from_email, [to], headers=headers)


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the pipelining connection makes, in order."""
    writes: list[bytes] = []
    original = PipeliningSMTP.send

    def counting_send(self: PipeliningSMTP, s: Any) -> None:
        writes.append(s.encode("ascii") if isinstance(s, str) else bytes(s))
        original(self, s)

    monkeypatch.setattr(PipeliningSMTP, "send", counting_send)
    return writes


def test_a_message_is_two_writes_and_arrives_byte_for_byte(
    settings: SettingsWrapper, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point_at(settings, sink)
    writes = _writes(monkeypatch)
    # A line holding only a dot would end the data early if it were not doubled.
    messages = [_message(f"m{i}@example.org", body=f"Hi {i}\n.\n..lead\n") for i in range(3)]
    with GuardedBackend() as backend:
        assert isinstance(backend.transport, SMTPTransport)
        writes.clear()  # EHLO
        assert backend.send_messages(messages) == 3
    assert sink.wait_for(3, timeout=30)
    received = sink.messages()
    assert [m.rcpt_tos for m in received] == [(f"m{i}@example.org",) for i in range(3)]
    for message, got in zip(messages, received, strict=True):
        assert got.data.replace(b"\r\n", b"\n") == message_bytes(message).replace(b"\r\n", b"\n")
    # Per message: the three commands in one write, then the content with its end mark.
    per_message = [w for w in writes if w.split(b" ")[0].lower() not in (b"ehlo", b"quit\r\n")]
    assert len(per_message) == 6, per_message
    # (The sink sets no size limit, so it offers no SIZE and MAIL FROM carries none.)
    assert per_message[0] == b"mail FROM:<news@example.com>\r\nrcpt TO:<m0@example.org>\r\ndata\r\n"
    assert per_message[1].endswith(b"\r\n.\r\n")
    assert b"\r\n..\r\n" in per_message[1] and b"\r\n...lead\r\n" in per_message[1]


def test_refusals_raise_smtplibs_errors_and_the_connection_goes_on(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmtpSink() as sink:
        handler = sink._controller.handler  # type: ignore[union-attr]
        refusing = Refusing()
        monkeypatch.setattr(handler, "handle_MAIL", refusing.handle_MAIL, raising=False)
        monkeypatch.setattr(handler, "handle_RCPT", refusing.handle_RCPT, raising=False)
        transport = SMTPTransport(host="127.0.0.1", port=sink.port, timeout=10)
        transport.open()
        connection = transport.connection
        assert isinstance(connection, PipeliningSMTP)
        connection.ehlo_or_helo_if_needed()
        assert connection.has_extn("pipelining")
        raw = message_bytes(_message("ann@example.org"))
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            connection.sendmail("news@example.com", ["nobody@example.net"], raw)
        assert refused.value.recipients["nobody@example.net"][0] == 550
        with pytest.raises(smtplib.SMTPSenderRefused) as sender:
            connection.sendmail("banned@example.com", ["ann@example.org"], raw)
        assert sender.value.smtp_code == 550
        # After each refusal the transaction was reset: the same connection still sends.
        assert connection.sendmail("news@example.com", ["ann@example.org"], raw) == {}
        transport.close()
        assert sink.wait_for(1, timeout=30)
        assert [m.rcpt_tos for m in sink.messages()] == [("ann@example.org",)]


def test_a_server_without_pipelining_gets_one_command_per_write(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmtpSink(pipelining=False) as sink:
        _point_at(settings, sink)
        writes = _writes(monkeypatch)
        with GuardedBackend() as backend:
            writes.clear()
            assert backend.send_messages([_message("bob@example.org")]) == 1
        assert sink.wait_for(1, timeout=30)
    assert [w.split(b" ")[0].split(b":")[0] for w in writes[1:4]] == [b"mail", b"rcpt", b"data\r\n"]


def test_the_guard_still_reads_the_real_envelope_at_sendmail(
    settings: SettingsWrapper, sink: SmtpSink
) -> None:
    _point_at(settings, sink)
    backend = GuardedBackend()
    backend.open()
    try:
        connection = backend.transport.connection
        with pytest.raises(GuardViolation, match="outside the guard"):
            connection.sendmail("news@example.com", ["ann@example.org"], b"Subject: x\r\n\r\nx")
        two = EmailMessage("Hi", "Body", "news@example.com", ["ann@example.org", "bob@example.org"])
        with pytest.raises(GuardViolation):
            backend.send_messages([two])
    finally:
        backend.close()
    assert sink.count() == 0


def _scripted_server(replies: bytes, after_data: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection SMTP server that offers PIPELINING, reads the three pipelined
    commands, answers them with `replies`, and keeps whatever else the client writes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 scripted\r\n")
            lines.readline()  # EHLO
            conn.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
            commands = [lines.readline() for _ in range(3)]
            assert commands[2].upper() == b"DATA\r\n", commands
            conn.sendall(replies)
            if replies.startswith(b"421"):
                return  # and hang up, as a server that is shutting down does
            conn.settimeout(10)
            while chunk := lines.read1(65536):  # until the client hangs up
                after_data.append(chunk)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    return port, server


def test_a_354_after_a_refused_recipient_writes_no_content() -> None:
    """A server that takes DATA although it refused the only recipient is disconnected
    before the content: without its end-of-data mark no message can be delivered."""
    after_data: list[bytes] = []
    port, server = _scripted_server(b"250 ok\r\n550 no such user\r\n354 go ahead\r\n", after_data)
    client = PipeliningSMTP("127.0.0.1", port, timeout=10)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("news@example.com", ["ann@example.org"], b"Subject: x\r\n\r\nsecret\r\n")
    server.join(timeout=30)
    assert not server.is_alive()
    # Not the content, and not an RSET either: in data mode the server would take any
    # later line as content, up to the next message's end-of-data mark.
    assert b"".join(after_data) == b""
    assert client.sock is None


def test_a_421_is_a_refusal_to_retry_not_a_message_lost_in_transit() -> None:
    """A server shutting down answers 421 and hangs up without the other replies:
    smtplib's refusal for that step, which the worker retries (a disconnect would leave
    the delivery `unknown`)."""
    port, server = _scripted_server(b"421 4.3.2 shutting down\r\n", [])
    client = PipeliningSMTP("127.0.0.1", port, timeout=10)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("news@example.com", ["ann@example.org"], b"Subject: x\r\n\r\nx\r\n")
    server.join(timeout=30)
    assert refused.value.smtp_code == 421 and client.sock is None
    assert classify_failure(refused.value).status == Delivery.Status.RETRY_WAIT
