"""Address parsing as every parser on the way out reads it, and the serialized headers.

The parsers disagree on hostile input (Python 3.11.7's `getaddresses` predates the
strict fix; anymail splits a single "a@x, b@y" string into two recipients), so a value
counts as one address only when all of them read the same single address."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Iterator
from email import message_from_bytes, policy
from email.errors import HeaderParseError
from email.utils import getaddresses
from urllib.parse import unquote

from anymail.exceptions import AnymailError
from anymail.utils import parse_address_list
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.message import sanitize_address
from django.utils.encoding import punycode

from accounts.validators import FORMAT_CHARACTERS, single_address_error

from .vocabulary import SERIALIZED_RECIPIENT_HEADERS, GuardViolation, address_tokens_in


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
        sanitized = sanitize_address(value, encoding)
    except ValueError as error:
        results["django"] = [f"<unparseable: {error}>"]
    else:
        results["django"] = [addr for _name, addr in getaddresses([sanitized])]
    return results


def single_address(value: object, *, what: str, encoding: str = "utf-8") -> str:
    """The one bare address in `value`, or a GuardViolation-worthy reason as ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r}")
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


def serialize(message: EmailMessage, *, layer: str) -> bytes:
    """The bytes Django's SMTP backend and the outbox write (and Django's own header check)."""
    try:
        raw: bytes = message.message().as_bytes(linesep="\r\n")
        return raw
    except ValueError as error:  # BadHeaderError is a ValueError; so are bad addresses
        raise GuardViolation(
            layer,
            f"the message cannot be serialized, so its recipients cannot be verified: {error}",
            message=message,
        ) from None


def require_serialized_recipient(
    raw: bytes, recipient: str, *, message: EmailMessage, layer: str
) -> None:
    """The serialized headers name exactly `recipient`, read by both email parsers."""
    legacy = message_from_bytes(raw)  # compat32: raw header strings
    modern = message_from_bytes(raw, policy=policy.default)  # structured address headers
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


# A tag, comment or declaration, stopping at the next "<": linear even on "<a <a <a ...".
_MARKUP = re.compile(r"<[^<>]*>")


def shown_variants(text: str) -> Iterator[str]:
    """`text` as bytes on the wire and as a mail client may show it.

    The raw text (attributes included), then with HTML entities and %-escapes undone,
    then with tags removed (`zoe<span></span>@example.net` shows as one address); each
    NFKC-normalized (a full-width "＠" is "@") with invisible format characters removed
    (a zero-width space before the "@" is not seen). Each step is linear in the text.
    """
    unescaped = html.unescape(text)
    seen: set[str] = set()
    for variant in (text, unescaped, unquote(unescaped), html.unescape(_MARKUP.sub("", text))):
        shown = FORMAT_CHARACTERS.sub("", unicodedata.normalize("NFKC", variant))
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
    return {addr.lower() for _name, addr in getaddresses(list(values)) if addr}
