"""Address parsing as every parser on the way out reads it, and the serialized headers.

The parsers disagree on hostile input (Python 3.11.7's `getaddresses` predates the
strict fix; anymail splits a single "a@x, b@y" string into two recipients), so a value
counts as one address only when all of them read the same single address."""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from email import policy
from email.errors import HeaderParseError
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from anymail.exceptions import AnymailError
from anymail.utils import parse_address_list
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.message import sanitize_address
from django.utils.encoding import punycode

from accounts.validators import (
    CONTROL_CHARACTERS,
    FORMAT_CHARACTERS,
    PLAIN_ADDR_SPEC,
    single_address_error,
)

from .vocabulary import SERIALIZED_RECIPIENT_HEADERS, GuardViolation, address_tokens_in


@lru_cache(maxsize=4096)
def _sanitized(value: str, encoding: str) -> tuple[str, str]:
    try:
        return sanitize_address(value, encoding), ""
    except ValueError as error:
        return "", str(error) or type(error).__name__


def sanitized_address(value: object, encoding: str) -> str:
    """Django's `sanitize_address`, what its SMTP backend puts in MAIL FROM and RCPT TO.

    A pure function of its arguments and one of the dearest steps of a send, asked for
    the same address by the pre-flight, the backend and the envelope layer: remembered
    for the last few thousand strings. Raises ValueError as Django's does.
    """
    if not isinstance(value, str):
        return sanitize_address(value, encoding)  # type: ignore[arg-type]
    result, error = _sanitized(value, encoding)
    if error:
        raise ValueError(error)
    return result


# The one form the builder writes (rendering.format_address): a bare addr-spec, or plain
# words or RFC 2047 base64 encoded words, then the addr-spec in angle brackets. Nothing in
# it is a special any parser could read differently (no quote, comma, semicolon, colon,
# backslash, parenthesis, second "@" or "<", no q-encoding), so every parser on the way out
# reads exactly that one addr-spec. `tests/guard/test_one_reading.py` holds each parser to
# that over hostile and generated values. A value in any other form gets the full reading
# by every parser.
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_ENCODED_WORD = re.compile(rf"=\?utf-8\?b\?({_BASE64})\?=", re.ASCII)
_PHRASE_WORD = rf"(?:[A-Za-z0-9'-]+|=\?utf-8\?b\?{_BASE64}\?=)"
CANONICAL_MAILBOX = re.compile(
    rf"{_PHRASE_WORD}(?:[ \t]+{_PHRASE_WORD})*[ \t]+<(?P<named>{PLAIN_ADDR_SPEC})>"
    rf"|(?P<bare>{PLAIN_ADDR_SPEC})",
    re.ASCII,
)


def canonical_address(value: str) -> str | None:
    """The addr-spec of `value` if it is in the builder's canonical form, else None."""
    match = CANONICAL_MAILBOX.fullmatch(value)
    if match is None:
        return None
    named = match.group("named")
    if named is None:
        return str(match.group("bare"))
    # Django decodes the name to re-encode it and refuses one with a line break; a
    # decoded control character or bad UTF-8 is therefore not the canonical form.
    for word in _ENCODED_WORD.findall(value[: match.start("named")]):
        try:
            text = base64.b64decode(word, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if CONTROL_CHARACTERS.search(text):
            return None
    return str(named)


def envelope_address(value: object, encoding: str) -> str:
    """The RCPT TO entry for a recipient value, as Django's SMTP backend hands it to smtplib.

    Django passes `sanitize_address(value)`, of which smtplib sends only the addr-spec
    (`quoteaddr`). For the canonical form that addr-spec is the one every parser reads,
    so the entry is the bare addr-spec itself: the same RCPT TO, without Django's
    re-encoding of the display name (one of the dearest steps of a send). Anything else
    gets Django's `sanitize_address`; raises ValueError as it does.
    """
    if isinstance(value, str):
        canonical = canonical_address(value)
        if canonical is not None:
            return canonical
    return sanitized_address(value, encoding)


def _parsed_by_every_parser(value: str, encoding: str) -> dict[str, list[str]]:
    """The addresses each parser on the way out reads in `value` (one list per parser)."""
    results: dict[str, list[str]] = {}
    results["getaddresses"] = [addr for _name, addr in getaddresses([value])]
    try:
        header = policy.default.header_factory("To", value)
        results["email.policy.default"] = [a.addr_spec for a in header.addresses]
    except (HeaderParseError, IndexError, ValueError, TypeError, AttributeError) as error:
        # The modern parser raises several types on hostile input; all mean "not one address".
        results["email.policy.default"] = [f"<unparseable: {error}>"]
    try:
        results["anymail"] = [a.addr_spec for a in parse_address_list([value])]
    except AnymailError as error:
        results["anymail"] = [f"<unparseable: {error}>"]
    try:
        sanitized = sanitized_address(value, encoding)
    except ValueError as error:
        results["django"] = [f"<unparseable: {error}>"]
    else:
        results["django"] = [addr for _name, addr in getaddresses([sanitized])]
    return results


def single_address(value: object, *, what: str, encoding: str = "utf-8") -> str:
    """The one bare address in `value`, or a GuardViolation-worthy reason as ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r}")
    # Every parser reads the canonical form as its one address (see CANONICAL_MAILBOX);
    # any other form is read by each of them.
    address = canonical_address(value)
    if address is None:
        readings = _parsed_by_every_parser(value, encoding)
        found = {addr for addrs in readings.values() for addr in addrs}
        if any(len(addrs) != 1 for addrs in readings.values()) or len(found) != 1:
            detail = "; ".join(f"{parser} reads {addrs!r}" for parser, addrs in readings.items())
            raise ValueError(f"{what} {value!r} is not exactly one address ({detail})")
        (address,) = found
    error = single_address_error(address)
    if error is not None:
        raise ValueError(f"{what} {value!r}: address {address!r} {error}")
    return address


def comparable_address(address: str) -> str:
    """Case-folded, with an internationalized domain in punycode (as it goes on the wire)."""
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = punycode(domain)
        except UnicodeError:
            pass  # left as is: then it simply matches nothing else
    return f"{local}@{domain}".casefold()


def same_address(a: str, b: str) -> bool:
    return comparable_address(a) == comparable_address(b)


def expected_recipient(message: EmailMessage) -> str | None:
    """The campaign delivery's frozen address, or None for other mail (notifications...)."""
    value = getattr(message, "expected_recipient", None)
    if value is None:
        return None
    if not isinstance(value, str) or single_address_error(value) is not None:
        raise GuardViolation(
            "recipients",
            f"the delivery's expected recipient {value!r} is not one bare address",
            message=message,
        )
    return value


def the_recipient(message: EmailMessage, *, layer: str) -> str:
    """The one address this message may go to: the delivery's, or the single To of other mail."""
    expected = expected_recipient(message)
    if expected is not None:
        return expected
    to = list(message.to)
    if len(to) != 1:
        raise GuardViolation(
            layer, f"{len(to)} entries in To, expected exactly one", message=message
        )
    try:
        return single_address(to[0], what="To", encoding=message_encoding(message))
    except ValueError as error:
        raise GuardViolation(layer, str(error), message=message) from None


def message_encoding(message: EmailMessage) -> str:
    return str(message.encoding or settings.DEFAULT_CHARSET)


def serialization_key(message: EmailMessage) -> tuple[Any, ...] | None:
    """Everything the serialized bytes are made from, or None when that cannot be pinned.

    Two equal keys give the same bytes (Date and Message-ID are the builder's own
    headers for campaign mail; for other mail Django invents them anew on every call, so
    the cached bytes are one valid serialization of many, and the transport's real bytes
    are checked again anyway). Strings and tuples compare by value, so any later change
    to the message, even in place, yields a different key.
    """
    if message.attachments:
        return None
    return (
        type(message),
        message.subject,
        message.body,
        message.from_email,
        tuple(message.to),
        tuple(message.cc),
        tuple(message.bcc),
        tuple(message.reply_to),
        tuple((str(k), str(v)) for k, v in message.extra_headers.items()),
        tuple(tuple(a) for a in getattr(message, "alternatives", ())),
        message.content_subtype,
        getattr(message, "mixed_subtype", None),
        getattr(message, "alternative_subtype", None),
        message.encoding,
        settings.DEFAULT_CHARSET,
    )


def message_bytes(message: EmailMessage) -> bytes:
    """The bytes Django's `message().as_bytes(linesep="\\r\\n")` gives, from the message's
    own writer when it has one (`CampaignMessage.wire_bytes` writes the same bytes
    directly). The guard reads these bytes, and they are the ones that go out."""
    wire_bytes = getattr(message, "wire_bytes", None)
    raw: bytes = (
        wire_bytes() if callable(wire_bytes) else message.message().as_bytes(linesep="\r\n")
    )
    return raw


def serialize(message: EmailMessage, *, layer: str) -> bytes:
    """The bytes Django's SMTP backend and the outbox write (and Django's own header check).

    Serialized once per message: the bytes are kept on the message with the key they
    were made from, and made again whenever anything in the message changed since.
    """
    key = serialization_key(message)
    cached = message.__dict__.get("_countersign_serialized")
    if key is not None and cached is not None and cached[0] == key:
        kept: bytes = cached[1]
        return kept
    try:
        raw = message_bytes(message)
    except ValueError as error:  # BadHeaderError is a ValueError; so are bad addresses
        raise GuardViolation(
            layer,
            f"the message cannot be serialized, so its recipients cannot be verified: {error}",
            message=message,
        ) from None
    if key is not None:
        message.__dict__["_countersign_serialized"] = (key, raw)
    return raw


# The end of a header block, and what a line of it may be: a field ("Name:" with a
# printable name) or a continuation (starting with a space or tab).
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_FIELD_LINE = re.compile(rb"[!-9;-~]+:")
# The same rules for a whole block at once: a field line, then lines each a field or a
# continuation, none holding a CR or NUL. `header_block` reads line by line only to name
# the line of a block this refuses (tests/guard/test_one_reading.py holds the two equal).
_STRICT_BLOCK = re.compile(rb"[!-9;-~]+:[^\r\n\x00]*(?:\r?\n(?:[ \t]|[!-9;-~]+:)[^\r\n\x00]*)*")


def header_block(raw: bytes, *, message: EmailMessage, layer: str) -> bytes:
    """The header block of `raw` (up to the first blank line), read strictly.

    Every line must be a field or the continuation of one; a bare CR, a line without a
    field name or a block without an end refuses the message. Lenient parsers treat such
    a line as the start of the body, where an MTA may still read headers: so nothing
    after it is assumed to be only body.
    """
    end = _BLANK_LINE.search(raw)
    if end is None:
        raise GuardViolation(
            layer, "the serialized message has no blank line after its headers", message=message
        )
    block = raw[: end.start()]
    if _STRICT_BLOCK.fullmatch(block):
        return block + b"\r\n\r\n"
    # Refused: find the line to name.
    for number, line in enumerate(_LINE_END.split(block)):
        if b"\r" in line or b"\x00" in line:
            raise GuardViolation(
                layer,
                f"serialized header line {number + 1} holds a bare CR or NUL",
                message=message,
            )
        if line[:1] in (b" ", b"\t") and number > 0:
            continue
        if not _FIELD_LINE.match(line):
            raise GuardViolation(
                layer,
                f"serialized header line {number + 1} is neither a field nor a continuation: "
                f"{line[:80]!r}",
                message=message,
            )
    raise GuardViolation(  # pragma: no cover - the loop names every line the pattern refuses
        layer,
        "the serialized header block is not strictly fields and continuations",
        message=message,
    )


# Header blocks already proven to name exactly one recipient, with that recipient: the
# pre-flight and the backend check the same bytes, and the second check is this lookup.
# Only successes are kept (a refusal always raises afresh); bounded, oldest out first.
_VERIFIED_BLOCKS: OrderedDict[tuple[bytes, str], None] = OrderedDict()
_VERIFIED_MAX = 512
_LEGACY_PARSER = BytesHeaderParser()  # compat32: raw header strings
_MODERN_PARSER = BytesHeaderParser(policy=policy.default)  # structured address headers


def require_serialized_recipient(
    raw: bytes, recipient: str, *, message: EmailMessage, layer: str
) -> None:
    """The serialized headers name exactly `recipient`, read by both email parsers.

    Only the header block is parsed (strictly, see `header_block`): recipients live
    there, and the bodies (most of the bytes) cannot add a header.
    """
    block = header_block(raw, message=message, layer=layer)
    memo_key = (block, comparable_address(recipient))
    if memo_key in _VERIFIED_BLOCKS:
        return
    fields = recipient_fields(block)
    if len(fields) == 1 and fields[0][0].lower() == "to":
        canonical = canonical_address(fields[0][1])
        if canonical is not None and same_address(canonical, recipient):
            # One recipient field, To, in the form every parser reads as this address.
            _remember_block(memo_key)
            return
    legacy = _LEGACY_PARSER.parsebytes(block)
    modern = _MODERN_PARSER.parsebytes(block)
    to_headers = legacy.get_all("To") or []
    if len(to_headers) != 1:
        raise GuardViolation(
            layer, f"the serialized message has {len(to_headers)} To headers", message=message
        )
    raw_values: list[str] = []
    structured: list[str] = []
    for name in SERIALIZED_RECIPIENT_HEADERS:
        raw_values.extend(str(v) for v in legacy.get_all(name) or [])
        for header in modern.get_all(name) or []:
            addresses = getattr(header, "addresses", None)
            if addresses is None:
                structured.append(f"<unparsed {name}: {header!s}>")
            else:
                structured.extend(a.addr_spec for a in addresses)
    legacy_addresses = [addr for _name, addr in getaddresses(raw_values)]
    for parser, addresses in (
        ("getaddresses", legacy_addresses),
        ("email.policy.default", structured),
    ):
        if len(addresses) != 1 or not same_address(addresses[0], recipient):
            raise GuardViolation(
                layer,
                f"the serialized recipient headers read as {addresses!r} ({parser}), "
                f"expected only {recipient!r}",
                message=message,
            )
    _remember_block(memo_key)


def _remember_block(memo_key: tuple[bytes, str]) -> None:
    _VERIFIED_BLOCKS[memo_key] = None
    if len(_VERIFIED_BLOCKS) > _VERIFIED_MAX:
        _VERIFIED_BLOCKS.popitem(last=False)


_RECIPIENT_FIELD_NAMES = frozenset(name.lower() for name in SERIALIZED_RECIPIENT_HEADERS)


def recipient_fields(block: bytes) -> list[tuple[str, str]]:
    """The recipient fields of a strict header block (see `header_block`), unfolded.

    Split where both standard-library parsers split: a line with a field name starts a
    field, a line starting with a space or tab continues it. Names and values as they
    read them (`name: value`, the value without its leading blanks, continuation lines
    joined without their line breaks); bytes outside ASCII are kept escaped, which no
    canonical form matches.
    """
    fields: list[tuple[str, list[str]]] = []
    in_recipient_field = False
    for line in _LINE_END.split(block.rstrip(b"\r\n")):
        text = line.decode("ascii", "backslashreplace")
        if text[:1] in (" ", "\t"):
            if in_recipient_field:
                fields[-1][1].append(text)
            continue
        name, _, value = text.partition(":")
        in_recipient_field = name.lower() in _RECIPIENT_FIELD_NAMES
        if in_recipient_field:
            fields.append((name, [value.lstrip(" \t")]))
    return [(name, "".join(parts).rstrip(" \t")) for name, parts in fields]


# A tag, comment or declaration, stopping at the next "<": linear even on "<a <a <a ...".
_MARKUP = re.compile(r"<[^<>]*>")
# What any step of `shown_variants` can change in ASCII text.
_TRANSFORMABLE = re.compile(r"[&%<]")


def shown_variants(text: str) -> Iterator[str]:
    """`text` as bytes on the wire and as a mail client may show it.

    The raw text (attributes included), then with HTML entities and %-escapes undone,
    then with tags removed (`zoe<span></span>@example.net` shows as one address); each
    NFKC-normalized (a full-width "＠" is "@") with invisible format characters removed
    (a zero-width space before the "@" is not seen). Each step is linear in the text.
    """
    if text.isascii() and not _TRANSFORMABLE.search(text):
        # No entity, %-escape or tag, and NFKC leaves ASCII as it is: one reading.
        yield text
        return
    unescaped = html.unescape(text)
    seen: set[str] = set()
    for variant in (text, unescaped, unquote(unescaped), html.unescape(_MARKUP.sub("", text))):
        # NFKC leaves ASCII as it is and every format character is outside ASCII.
        shown = (
            variant
            if variant.isascii()
            else FORMAT_CHARACTERS.sub("", unicodedata.normalize("NFKC", variant))
        )
        if shown not in seen:  # plain text reads the same every way: search it once
            seen.add(shown)
            yield shown


def address_tokens(texts: Iterable[str]) -> set[str]:
    """Address-like tokens in `texts`, in every form a reader could see them."""
    tokens: set[str] = set()
    for text in texts:
        for variant in shown_variants(text):
            tokens.update(address_tokens_in(variant))
    return tokens


def addr_specs(values: Iterable[str]) -> set[str]:
    """The lower-cased addr-specs `getaddresses` reads in `values` (canonical ones directly)."""
    specs: set[str] = set()
    others: list[str] = []
    for value in values:
        canonical = canonical_address(value)
        if canonical is not None:
            specs.add(canonical.lower())
        else:
            others.append(value)
    specs.update(addr.lower() for _name, addr in getaddresses(others) if addr)
    return specs
