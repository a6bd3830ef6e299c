"""The SMTP envelope layer: the real RCPT TO list and bytes."""

from __future__ import annotations

import pytest

from campaigns.guard import envelope
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    ANN,
    BOB,
    delivery_message,
)

pytestmark = pytest.mark.django_db


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
