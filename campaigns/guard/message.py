"""Layers on the message itself: one recipient, clean headers, no merge, no foreign address.

They read the EmailMessage as the builder made it, its extra headers and its serialized
bytes, whatever transport it goes to next."""

from __future__ import annotations

from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message

from anymail.utils import UNSET
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db.models.functions import Lower

from .addresses import (
    addr_specs,
    address_tokens,
    expected_recipient,
    message_encoding,
    require_serialized_recipient,
    same_address,
    serialize,
    single_address,
)
from .vocabulary import (
    BATCH_SWITCHES,
    HEADER_NAME,
    LINE_BREAK,
    MERGE_ATTRIBUTES,
    GuardViolation,
    esp_extra_reason,
    field_key,
    present,
    smuggled_header_reason,
    walk_items,
)


def require_single_recipient(message: EmailMessage) -> None:
    """Exactly one recipient in To (none in Cc/Bcc), in the fields, headers and bytes.

    Reply-To is not a recipient and is ignored. For a campaign delivery the address must
    equal `expected_recipient` (case-insensitive); any other mail must simply have one.
    """
    layer = "recipients"
    to, cc, bcc = list(message.to), list(message.cc), list(message.bcc)
    if len(to) != 1 or cc or bcc:
        raise GuardViolation(
            layer,
            f"{len(to)} To, {len(cc)} Cc and {len(bcc)} Bcc entries; exactly one To is allowed",
            message=message,
        )
    try:
        address = single_address(to[0], what="To", encoding=message_encoding(message))
    except ValueError as error:
        raise GuardViolation(layer, str(error), message=message) from None
    expected = expected_recipient(message)
    if expected is not None and not same_address(address, expected):
        raise GuardViolation(
            layer,
            f"addressed to {address!r}, but the delivery is for {expected!r}",
            message=message,
        )
    for name, value in message.extra_headers.items():
        reason = smuggled_header_reason(name, value)
        if reason is not None:
            raise GuardViolation(layer, f"extra {reason}", message=message)
    if present(message, "esp_extra"):
        reason = esp_extra_reason(message.esp_extra)  # type: ignore[attr-defined]
        if reason is not None:
            raise GuardViolation(layer, reason, message=message)
    raw = serialize(message, layer=layer)
    require_serialized_recipient(raw, address, message=message, layer=layer)


def _header_texts(message: EmailMessage) -> Iterator[tuple[str, str]]:
    yield "Subject", str(message.subject)
    yield "From", str(message.from_email)
    for field, values in (("To", message.to), ("Cc", message.cc), ("Bcc", message.bcc)):
        for value in values:
            yield field, str(value)
    for value in message.reply_to:
        yield "Reply-To", str(value)
    for name, value in message.extra_headers.items():
        yield str(name), str(value)
    # Anymail turns metadata and tags into headers for some providers (and SMTP relays).
    metadata = getattr(message, "metadata", UNSET)
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            yield f"metadata {key!s}", f"{key!s} {value!s}"
    tags = getattr(message, "tags", UNSET)
    if isinstance(tags, list | tuple):
        for tag in tags:
            yield "tag", str(tag)


def require_clean_headers(message: EmailMessage) -> None:
    """No header name or value with CR, LF or another line break.

    Scans the fields and extra headers directly, because anymail's HTTP backends never
    call `message()`, and then lets Django's own check in `message()` run as well.
    """
    layer = "headers"
    for name, value in _header_texts(message):
        if LINE_BREAK.search(value):
            raise GuardViolation(layer, f"{name} contains a line break: {value!r}", message=message)
    for name in message.extra_headers:
        if not HEADER_NAME.fullmatch(str(name)):
            raise GuardViolation(layer, f"invalid header name {name!r}", message=message)
    serialize(message, layer=layer)


def require_no_merge(message: EmailMessage) -> None:
    """No anymail merge attribute at all: any of them, even empty, means a batch send."""
    layer = "merge"
    for attr in MERGE_ATTRIBUTES:
        if present(message, attr):
            raise GuardViolation(
                layer, f"{attr} is set ({getattr(message, attr)!r})", message=message
            )
    if present(message, "esp_extra"):
        for key, value in walk_items(message.esp_extra):  # type: ignore[attr-defined]
            if field_key(key) in BATCH_SWITCHES:
                raise GuardViolation(layer, f"esp_extra sets {key!s}={value!r}", message=message)


def _body_texts(message: EmailMessage) -> Iterator[str]:
    yield str(message.subject)
    for value in message.to:
        # The display name the recipient sees next to their own address, decoded as
        # their mail client will show it.
        yield str(value)
        if "=?" not in str(value):
            continue  # no encoded word: it reads as it is
        try:
            yield str(make_header(decode_header(str(value))))
        except (HeaderParseError, UnicodeError, LookupError):
            pass
    yield str(message.body)
    for alternative in getattr(message, "alternatives", []):
        content = alternative[0]
        yield content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    for attachment in message.attachments:
        if isinstance(attachment, Message):
            if attachment.get_content_maintype() == "text":
                payload = attachment.get_payload(decode=True)
                if isinstance(payload, bytes):
                    yield payload.decode("utf-8", "replace")
            continue
        _filename, content, mimetype = attachment
        if isinstance(content, str):
            yield content
        elif isinstance(content, bytes) and str(mimetype or "").startswith("text/"):
            yield content.decode("utf-8", "replace")


def require_no_foreign_addresses(message: EmailMessage) -> None:
    """Layer 6: no other user's address in the subject, bodies or text attachments.

    Addresses of the recipient, the sender (From, Reply-To, Sender) and the unsubscribe
    mailbox are allowed; so is any address that belongs to no user. One query, and only
    when the content holds address-like tokens at all.
    """
    layer = "content"
    tokens = address_tokens(_body_texts(message))
    if not tokens:
        return
    expected = expected_recipient(message)
    recipients = [expected] if expected is not None else [str(v) for v in message.to]
    # Parsed addresses, not tokens: a display name like "bob@x" <ann@x> allows only ann.
    allowed = addr_specs(
        [
            *recipients,
            str(message.from_email),
            *(str(v) for v in message.reply_to),
            *(
                str(value)
                for name, value in message.extra_headers.items()
                if field_key(name) in {"from", "sender", "reply-to"}
            ),
        ]
    )
    allowed |= address_tokens([str(getattr(settings, "UNSUBSCRIBE_MAILTO", "") or "")])
    candidates = tokens - allowed
    if not candidates:
        return
    user_model = get_user_model()
    foreign = sorted(
        user_model._default_manager.annotate(email_ci=Lower("email"))
        .filter(email_ci__in=sorted(candidates))
        .values_list("email_ci", flat=True)[:5]
    )
    if foreign:
        raise GuardViolation(
            layer,
            f"the content contains the address of another user: {', '.join(foreign)}",
            message=message,
        )
