"""A local stand-in for Postmark's email API, for tests and for worker processes under test.

It speaks enough of https://postmarkapp.com/developer/api/email-api for anymail's Postmark
backend: it checks the X-Postmark-Server-Token header, records every request, and answers
the fields anymail reads (ErrorCode, Message, MessageID, To, SubmittedAt). Each request
takes the next scripted reply, or a normal 200 when nothing is scripted:

    with PostmarkStub() as stub:
        stub.script(Reply.rate_limited(), Reply.ok())
        ...                              # first request gets 429, the second 200
        assert stub.requests[1].json["To"] == "ann@example.org"

The server runs on 127.0.0.1 in a thread of the test process, so a separate worker
process can use it too: pass `stub.env()` to the worker's environment.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import override_settings

POSTMARK_TRANSPORT = "anymail.backends.postmark.EmailBackend"
TEST_TOKEN = "test-token"
# Endpoints that take one message, and those that take a list of them.
SINGLE_ENDPOINTS = {"/email", "/email/withTemplate", "/email/withTemplate/"}
BATCH_ENDPOINTS = {"/email/batch", "/email/batchWithTemplates"}


@dataclass
class Reply:
    """One scripted answer. `body` None means the usual body for `status`."""

    status: int = 200
    body: Any = None
    # Seconds to wait before answering: longer than the client's timeout means "hang".
    delay: float = 0.0
    # For a 200: the "To" Postmark reports (default: the To of the request).
    to: str | None = None

    @classmethod
    def ok(cls, *, to: str | None = None) -> Reply:
        return cls(200, to=to)

    @classmethod
    def invalid_address(cls, address: str) -> Reply:
        # ErrorCode 300 "Invalid email request", as Postmark words an invalid To.
        return cls(422, {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{address}'."})

    @classmethod
    def inactive_recipient(cls, address: str) -> Reply:
        # ErrorCode 406: the address hard-bounced or complained before; nothing was sent.
        return cls(
            422,
            {
                "ErrorCode": 406,
                "Message": (
                    "You tried to send to a recipient that has been marked as inactive.\n"
                    f"Found inactive addresses: {address.lower()}.\n"
                    "Inactive recipients are ones that have generated a hard bounce or a "
                    "spam complaint. "
                ),
            },
        )

    @classmethod
    def rate_limited(cls) -> Reply:
        return cls(429, {"ErrorCode": 429, "Message": "Rate limit exceeded."})

    @classmethod
    def server_error(cls) -> Reply:
        return cls(500, {"ErrorCode": 500, "Message": "Internal server error."})

    @classmethod
    def unavailable(cls) -> Reply:
        return cls(503, {"ErrorCode": 503, "Message": "Service unavailable."})

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Accept the request, then answer only after `seconds` (a 200, if anyone still listens)."""
        return cls(200, delay=seconds)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


class PostmarkStub:
    def __init__(self, *, token: str = TEST_TOKEN) -> None:
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> PostmarkStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stub._handle(self)

            def do_GET(self) -> None:
                stub._send(self, 404, {"ErrorCode": 404, "Message": "Not found."})

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="postmark-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes any hanging reply
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PostmarkStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration for the code under test ---

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def anymail_settings(self, **extra: Any) -> dict[str, Any]:
        """The ANYMAIL setting that points anymail's Postmark backend here."""
        return {"POSTMARK_SERVER_TOKEN": self.token, "POSTMARK_API_URL": self.url, **extra}

    def env(self) -> dict[str, str]:
        """Environment for a worker process (config/settings.py maps ANYMAIL_* into ANYMAIL)."""
        return {
            "EMAIL_TRANSPORT": POSTMARK_TRANSPORT,
            "ANYMAIL_POSTMARK_SERVER_TOKEN": self.token,
            "ANYMAIL_POSTMARK_API_URL": self.url,
        }

    @contextmanager
    def configured(self, **anymail_extra: Any) -> Iterator[PostmarkStub]:
        """Point EMAIL_TRANSPORT and ANYMAIL at this stub for the duration."""
        with override_settings(
            EMAIL_TRANSPORT=POSTMARK_TRANSPORT, ANYMAIL=self.anymail_settings(**anymail_extra)
        ):
            yield self

    # --- scripting and inspection ---

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order; afterwards requests get a 200."""
        with self._lock:
            self._replies.extend(replies)

    def posted(self) -> list[Any]:
        """The JSON bodies received so far."""
        with self._lock:
            return [request.json for request in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._replies.clear()

    # --- the server side ---

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(
            method="POST",
            path=handler.path,
            headers={name: value for name, value in handler.headers.items()},
            body=body,
            json=parsed,
        )
        with self._lock:
            self.requests.append(request)
            reply = self._replies.popleft() if self._replies else Reply.ok()
        if reply.delay:
            self._stopping.wait(reply.delay)
        if handler.headers.get("X-Postmark-Server-Token") != self.token:
            self._send(
                handler,
                401,
                {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."},
            )
            return
        path = handler.path.split("?", 1)[0]
        if path not in SINGLE_ENDPOINTS | BATCH_ENDPOINTS:
            self._send(handler, 404, {"ErrorCode": 404, "Message": f"No endpoint {path}."})
            return
        if parsed is None:
            self._send(handler, 422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
            return
        if reply.status != 200:
            self._send(handler, reply.status, reply.body)
            return
        if reply.body is not None:
            self._send(handler, 200, reply.body)
        elif path in BATCH_ENDPOINTS:
            messages = parsed.get("Messages", []) if isinstance(parsed, dict) else parsed
            self._send(handler, 200, [self._accepted(m, reply.to) for m in messages])
        elif isinstance(parsed, dict) and (parsed.get("To") or reply.to):
            self._send(handler, 200, self._accepted(parsed, reply.to))
        else:
            self._send(handler, 422, {"ErrorCode": 300, "Message": "Zero recipients specified"})

    @staticmethod
    def _accepted(message: Any, to: str | None) -> dict[str, Any]:
        recipients = to if to is not None else (message or {}).get("To", "")
        if not recipients:
            return {"ErrorCode": 300, "Message": "Zero recipients specified"}
        return {
            "To": recipients,
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "MessageID": str(uuid.uuid4()),
            "ErrorCode": 0,
            "Message": "OK",
        }

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


@pytest.fixture
def postmark_stub() -> Iterator[PostmarkStub]:
    """A running stub with EMAIL_TRANSPORT and ANYMAIL pointed at it."""
    with PostmarkStub() as stub, stub.configured():
        yield stub
