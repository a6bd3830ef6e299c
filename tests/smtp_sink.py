"""A real SMTP server on loopback that keeps every message it is given, for tests and benches.

It runs aiosmtpd in a thread of the calling process and listens on 127.0.0.1 at a free
port chosen by the kernel, so a separate worker process can deliver to it too: pass
`sink.env()` to the worker's environment.

    with SmtpSink() as sink:
        ...                                    # workers send through Django's SMTP backend
        sink.wait_for(2000, timeout=120)
        for received in sink.messages():
            received.rcpt_tos, received.parsed()["To"]

What it records is what crossed the wire: the envelope (MAIL FROM, every RCPT TO) and the
raw bytes of DATA, before any parsing. Each message also names its connection (the
client's address and port), so a test can see how many connections were used.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage as ParsedMessage
from typing import Any

from aiosmtpd.controller import Controller

# The project's SMTP transport (Django's, with each message's commands pipelined when the
# server offers PIPELINING, as this sink does unless told not to).
SMTP_TRANSPORT = "campaigns.smtp.SMTPTransport"
DJANGO_SMTP_TRANSPORT = "django.core.mail.backends.smtp.EmailBackend"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    # The client's (host, port): one pair per SMTP connection.
    peer: tuple[str, int]
    received_at: float = field(default_factory=time.monotonic)

    def parsed(self) -> ParsedMessage:
        """The bytes parsed with the strict modern policy (header objects with .addresses)."""
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, ParsedMessage)
        return message


class _Handler:
    """aiosmtpd calls handle_DATA once per message, in the server's event-loop thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:
            # aiosmtpd reads commands one line at a time from a buffer, so it serves
            # pipelined commands in order; it only does not say so.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer), 0)
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        self.sink._record(
            ReceivedMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(str(rcpt) for rcpt in envelope.rcpt_tos),
                data=bytes(raw),
                peer=(str(peer[0]), int(peer[1])),
            )
        )
        return "250 Message accepted for delivery"


class _LoopbackController(Controller):
    """A Controller that may bind port 0: it learns the real port before its self-test."""

    def _trigger_server(self) -> None:
        # The base class connects to self.port to make aiosmtpd build its protocol object;
        # with port 0 that would fail, so read the port the kernel gave the listener first.
        assert isinstance(self.server, asyncio.Server)
        self.port = int(self.server.sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd is untyped


class SmtpSink:
    """A thread-safe SMTP sink on 127.0.0.1; start() it, or use it as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", pipelining: bool = True) -> None:
        self.host = host
        self.pipelining = pipelining
        self._messages: list[ReceivedMessage] = []
        self._condition = threading.Condition()
        self._controller: _LoopbackController | None = None

    # --- lifecycle ---

    def start(self) -> SmtpSink:
        controller = _LoopbackController(
            _Handler(self),
            hostname=self.host,
            port=0,
            # Long display names and HTML parts make big messages; no size limit here.
            data_size_limit=0,
            ready_timeout=30,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._controller is not None, "start the sink first"
        return int(self._controller.port)

    def env(self) -> dict[str, str]:
        """Environment for a worker process: Django's SMTP backend pointed at this sink."""
        return {
            "EMAIL_TRANSPORT": SMTP_TRANSPORT,
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": str(self.port),
            "EMAIL_USE_TLS": "false",
            "EMAIL_USE_SSL": "false",
            "EMAIL_HOST_USER": "",
            "EMAIL_HOST_PASSWORD": "",
        }

    def django_settings(self) -> dict[str, Any]:
        """The same, as settings for this process (e.g. `settings` fixture attributes)."""
        return {
            "EMAIL_TRANSPORT": SMTP_TRANSPORT,
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": self.port,
            "EMAIL_USE_TLS": False,
            "EMAIL_USE_SSL": False,
            "EMAIL_HOST_USER": "",
            "EMAIL_HOST_PASSWORD": "",
        }

    # --- inspection ---

    def _record(self, message: ReceivedMessage) -> None:
        with self._condition:
            self._messages.append(message)
            self._condition.notify_all()

    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of everything received so far, in arrival order."""
        with self._condition:
            return list(self._messages)

    def count(self) -> int:
        with self._condition:
            return len(self._messages)

    def clear(self) -> None:
        with self._condition:
            self._messages.clear()

    def rcpt_counts(self) -> Counter[str]:
        """How many messages each envelope recipient (lowercased) was given."""
        counts: Counter[str] = Counter()
        for message in self.messages():
            counts.update(rcpt.lower() for rcpt in message.rcpt_tos)
        return counts

    def per_connection(self) -> Counter[tuple[str, int]]:
        """Messages per SMTP connection (client host and port)."""
        return Counter(message.peer for message in self.messages())

    def max_in_window(self, seconds: float) -> int:
        """The most messages that arrived within any `seconds`-long stretch of time."""
        stamps = sorted(message.received_at for message in self.messages())
        best, first = 0, 0
        for last, stamp in enumerate(stamps):
            while stamp - stamps[first] >= seconds:
                first += 1
            best = max(best, last - first + 1)
        return best

    def wait_for(
        self,
        count: int,
        *,
        timeout: float,
        stop_early: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait until at least `count` messages arrived; False on timeout or `stop_early()`."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop_early is not None and stop_early()):
                    return False
                self._condition.wait(min(remaining, 0.5))
            return True
