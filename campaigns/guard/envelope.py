"""The SMTP layer: the RCPT TO list and the serialized headers name the same one person."""

from __future__ import annotations

import smtplib
from email.utils import getaddresses

from django.core.mail import EmailMessage

from accounts.validators import single_address_error

from .addresses import (
    CANONICAL_MAILBOX,
    envelope_address,
    expected_recipient,
    message_encoding,
    require_serialized_recipient,
    same_address,
    serialize,
)
from .vocabulary import GuardViolation


def _rcpt_address(entry: object, *, message: EmailMessage) -> str:
    """The address smtplib will put in RCPT TO for `entry`, if it is one bare address.

    smtplib keeps only what `parseaddr` finds (Django passes "Name <addr>", possibly with
    a folded name); `parseaddr` is lenient and takes the first of several addresses, so
    `getaddresses` must agree that there is only one.
    """
    layer = "smtp-envelope"
    if not isinstance(entry, str):
        raise GuardViolation(layer, f"RCPT TO entry {entry!r} is not a string", message=message)
    bare = CANONICAL_MAILBOX.fullmatch(entry)
    if bare is not None and bare.group("bare") is not None:
        # A bare plain addr-spec: smtplib sends it as is and every parser reads only it.
        problem = single_address_error(entry)
        if problem is not None:
            raise GuardViolation(layer, f"RCPT TO {entry!r}: {problem}", message=message)
        return entry
    rcpt = smtplib.quoteaddr(entry)
    address = rcpt[1:-1] if rcpt.startswith("<") and rcpt.endswith(">") else rcpt
    others = [addr for _name, addr in getaddresses([entry])]
    problem = single_address_error(address)
    if problem is not None or others != [address]:
        raise GuardViolation(
            layer,
            f"RCPT TO {entry!r} is not exactly one address (smtplib sends {rcpt!r}, "
            f"getaddresses reads {others!r})",
            message=message,
        )
    return address


def require_single_smtp_envelope(
    message: EmailMessage, *, envelope: list[str] | None = None, raw: bytes | None = None
) -> None:
    """The SMTP envelope (RCPT TO) is exactly the one address and the headers agree.

    Without arguments the envelope and bytes are computed exactly as the guarded backend
    sends them; the backend also calls this with the real `sendmail` arguments.
    """
    layer = "smtp-envelope"
    if envelope is None:
        encoding = message_encoding(message)
        try:
            envelope = [envelope_address(addr, encoding) for addr in message.recipients()]
        except ValueError as error:
            raise GuardViolation(
                layer, f"invalid envelope address: {error}", message=message
            ) from None
    if len(envelope) != 1:
        raise GuardViolation(
            layer, f"the envelope has {len(envelope)} recipients: {envelope!r}", message=message
        )
    address = _rcpt_address(envelope[0], message=message)
    expected = expected_recipient(message)
    if expected is not None and not same_address(address, expected):
        raise GuardViolation(
            layer, f"RCPT TO {address!r}, but the delivery is for {expected!r}", message=message
        )
    if raw is None:
        raw = serialize(message, layer=layer)
    require_serialized_recipient(raw, address, message=message, layer=layer)
