"""Mail backends: the guarded EMAIL_BACKEND and the embedded outbox transport."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend


class OutboxBackend(BaseEmailBackend):
    """Writes each message as one `.eml` file holding the exact bytes that would be sent."""

    def __init__(self, *, outbox_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbox_dir = Path(outbox_dir or settings.OUTBOX_DIR)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            raw = message.message().as_bytes(linesep="\r\n")
            stem = re.sub(
                r"[^A-Za-z0-9._-]",
                "_",
                message.extra_headers.get("Message-ID", "") or uuid.uuid4().hex,
            )
            path = self.outbox_dir / f"{stem.strip('_')[:150]}.eml"
            # Write then rename, so a reader never sees half a message.
            tmp = path.with_suffix(".eml.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, path)
            sent += 1
        return sent


class GuardedBackend(BaseEmailBackend):
    """The project's EMAIL_BACKEND: hands messages to EMAIL_TRANSPORT."""

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently)
        self.transport = get_connection(
            settings.EMAIL_TRANSPORT, fail_silently=fail_silently, **kwargs
        )

    def open(self) -> bool | None:
        return self.transport.open()

    def close(self) -> None:
        self.transport.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        return self.transport.send_messages(email_messages) or 0
