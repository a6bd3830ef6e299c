"""The one-recipient guard: every layer that refuses a message not addressed to exactly one person.

In 2019 a sender batched 1,000 addresses per provider call and the provider turned each
batch into one message with a shared `To:` line. The template was fine; the transport
payload was not. So the rule is checked on every representation a message takes on its
way out, each by its own named function, and each alone would have stopped that leak:

- `require_single_recipient`: the message's own fields, its extra headers and its
  serialized bytes, read by every address parser on the path (they disagree on hostile
  input: Python 3.11.7's `getaddresses` predates the strict fix, anymail splits a single
  "a@x, b@y" string into two recipients).
- `require_clean_headers`: no header name or value that could break a line.
- `require_no_merge`: no anymail merge attribute (any of them, even empty, makes anymail
  send a batch).
- `require_no_foreign_addresses`: no other user's address in the subject or bodies.
- `require_single_recipient_anymail_payload`: the provider payload after anymail merged
  `SEND_DEFAULTS` (a default bcc exists nowhere else).
- `require_single_smtp_envelope`: the RCPT TO list and the serialized headers.
- `require_provider_recipients`: after the send, the provider's own view of the recipients.
- `require_safe_mail_settings`: the anymail settings the system check also refuses.

`campaigns.backends.GuardedBackend` runs them. The registries below list which layers run;
tests narrow them to prove that each layer alone blocks its case. They are deliberately
not settings: nobody can switch a layer off in a deployment.
"""

from __future__ import annotations

import html
import json
import re
import smtplib
from collections.abc import Callable, Iterable, Iterator
from email import message_from_bytes, policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses
from functools import partial
from typing import Any
from urllib.parse import unquote

from anymail.exceptions import AnymailError
from anymail.utils import UNSET, parse_address_list
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.message import sanitize_address
from django.utils.encoding import punycode

from accounts.validators import single_address_error


class GuardViolation(Exception):
    """A message that is not addressed to exactly one person.

    `layer` names the check that refused it, `reason` says why. `sent` is False for every
    layer except "post-send": those messages were refused before anything left; a
    post-send violation means the provider already accepted the message and reported
    recipients other than the one we addressed (the caller pauses the campaign).
    """

    def __init__(
        self, layer: str, reason: str, *, message: EmailMessage | None = None, sent: bool = False
    ) -> None:
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason
        self.message = message
        self.sent = sent

    @property
    def delivery_id(self) -> int | None:
        return getattr(self.message, "delivery_id", None)

    @property
    def campaign_id(self) -> int | None:
        return getattr(self.message, "campaign_id", None)

    def audit_data(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "reason": self.reason,
            "delivery_id": self.delivery_id,
            "campaign_id": self.campaign_id,
            "sent": self.sent,
        }


# Anymail message attributes that switch it to batch sending (merge_global_data does not
# by itself, but it only exists to go with the others, so it is refused as well).
MERGE_ATTRIBUTES = ("merge_data", "merge_metadata", "merge_headers", "merge_global_data")

# Field names, in messages, headers and provider payloads, whose contents are recipients.
# Compared after `field_key` (lowercase, "_" as "-", Mailgun's "h:" header prefix removed).
RECIPIENT_FIELDS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "recipient",
        "recipients",
        "destination",
        "destinations",
        "toaddresses",
        "ccaddresses",
        "bccaddresses",
        "bulkemailentries",
        "recipient-variables",
        "header-to",
        "apparently-to",
        "envelope-to",
        "x-envelope-to",
        "delivered-to",
        "x-original-to",
        "x-rcpt-to",
        "x-forward-to",
        # Providers' SMTP APIs: a JSON header that fans one message out to a list.
        "x-smtpapi",
        "x-msys-api",
        "x-mailgun-recipient-variables",
    }
)
# In esp_extra (merged into the provider payload as is), structures that define recipients.
ESP_EXTRA_RECIPIENT_FIELDS = RECIPIENT_FIELDS | {"personalizations", "messages"}
# Switches that make a provider expose the whole recipient list or send a batch.
BATCH_SWITCHES = frozenset({"preserve-recipients", "batch-send-mode", "x-mc-preserverecipients"})
# Headers that may legitimately carry an address: they name the sender, not a recipient.
# (Message-ID, In-Reply-To and References hold ids that merely look like addresses.)
SENDER_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "message-id",
        "in-reply-to",
        "references",
    }
)
# Headers of the serialized message that name recipients.
SERIALIZED_RECIPIENT_HEADERS = (
    "To",
    "Cc",
    "Bcc",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
    "Apparently-To",
)

# Anything that reads as local@domain; deliberately loose, it only has to find candidates.
ADDRESS_TOKEN = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# CR, LF and every other character some parser treats as a line break, plus NUL.
_LINE_BREAK = re.compile("[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# RFC 5322 field name: printable ASCII except the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_SECRET_KEYS = frozenset(
    {"key", "api-key", "apikey", "token", "server-token", "password", "secret"}
)


def field_key(name: object) -> str:
    key = str(name).strip().lower().replace("_", "-")
    return key[2:] if key.startswith("h:") else key


def _present(message: EmailMessage, attr: str) -> bool:
    return getattr(message, attr, UNSET) is not UNSET


# --- address parsing ---------------------------------------------------------------------


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


def _single_address(value: object, *, what: str, encoding: str = "utf-8") -> str:
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


def _same_address(a: str, b: str) -> bool:
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
        return _single_address(to[0], what="To", encoding=_encoding(message))
    except ValueError as error:
        raise GuardViolation(layer, str(error), message=message) from None


def _encoding(message: EmailMessage) -> str:
    return str(message.encoding or settings.DEFAULT_CHARSET)


def _serialize(message: EmailMessage, *, layer: str) -> bytes:
    """The bytes Django's SMTP backend and the outbox write (and Django's own header check)."""
    try:
        return message.message().as_bytes(linesep="\r\n")
    except ValueError as error:  # BadHeaderError is a ValueError; so are bad addresses
        raise GuardViolation(
            layer,
            f"the message cannot be serialized, so its recipients cannot be verified: {error}",
            message=message,
        ) from None


def _require_serialized_recipient(
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
        if len(addresses) != 1 or not _same_address(addresses[0], recipient):
            raise GuardViolation(
                layer,
                f"the serialized recipient headers read as {addresses!r} ({parser}), "
                f"expected only {recipient!r}",
                message=message,
            )


def smuggled_header_reason(name: object, value: object) -> str | None:
    key = field_key(name)
    if key in RECIPIENT_FIELDS or key in BATCH_SWITCHES or key.startswith("resent-"):
        return f"header {name!s} names recipients"
    if key in SENDER_HEADERS:
        return None
    if ADDRESS_TOKEN.search(str(value)):
        return f"header {name!s} carries an address"
    return None


def _esp_extra_reason(extra: object) -> str | None:
    """Recipient fields or batch switches anywhere inside an esp_extra structure."""
    for key, _value in walk_items(extra):
        field = field_key(key)
        if field in ESP_EXTRA_RECIPIENT_FIELDS:
            return f"esp_extra sets {key!s}"
        if field in BATCH_SWITCHES:
            return f"esp_extra sets {key!s}, a batch or expose-the-list switch"
    return None


def walk_items(value: object) -> Iterator[tuple[object, object]]:
    """Every (key, value) pair in nested dicts, lists and lists of pairs."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk_items(item)
    elif isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and not isinstance(value, list):
            yield value[0], value[1]
            yield from walk_items(value[1])
        else:
            for item in value:
                yield from walk_items(item)


# --- layer 3: the message -----------------------------------------------------------------


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
        address = _single_address(to[0], what="To", encoding=_encoding(message))
    except ValueError as error:
        raise GuardViolation(layer, str(error), message=message) from None
    expected = expected_recipient(message)
    if expected is not None and not _same_address(address, expected):
        raise GuardViolation(
            layer,
            f"addressed to {address!r}, but the delivery is for {expected!r}",
            message=message,
        )
    for name, value in message.extra_headers.items():
        reason = smuggled_header_reason(name, value)
        if reason is not None:
            raise GuardViolation(layer, f"extra {reason}", message=message)
    if _present(message, "esp_extra"):
        reason = _esp_extra_reason(message.esp_extra)  # type: ignore[attr-defined]
        if reason is not None:
            raise GuardViolation(layer, reason, message=message)
    raw = _serialize(message, layer=layer)
    _require_serialized_recipient(raw, address, message=message, layer=layer)


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
        if _LINE_BREAK.search(value):
            raise GuardViolation(layer, f"{name} contains a line break: {value!r}", message=message)
    for name in message.extra_headers:
        if not _HEADER_NAME.fullmatch(str(name)):
            raise GuardViolation(layer, f"invalid header name {name!r}", message=message)
    _serialize(message, layer=layer)


def require_no_merge(message: EmailMessage) -> None:
    """No anymail merge attribute at all: any of them, even empty, means a batch send."""
    layer = "merge"
    for attr in MERGE_ATTRIBUTES:
        if _present(message, attr):
            raise GuardViolation(
                layer, f"{attr} is set ({getattr(message, attr)!r})", message=message
            )
    if _present(message, "esp_extra"):
        for key, value in walk_items(message.esp_extra):  # type: ignore[attr-defined]
            if field_key(key) in BATCH_SWITCHES:
                raise GuardViolation(layer, f"esp_extra sets {key!s}={value!r}", message=message)


def _body_texts(message: EmailMessage) -> Iterator[str]:
    yield str(message.subject)
    for value in message.to:
        # The display name the recipient sees next to their own address, decoded as
        # their mail client will show it.
        yield str(value)
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


def address_tokens(texts: Iterable[str]) -> set[str]:
    """Address-like tokens in `texts`, also after undoing HTML entities and %-escapes."""
    tokens: set[str] = set()
    for text in texts:
        unescaped = html.unescape(text)
        for variant in (text, unescaped, unquote(unescaped)):
            for match in ADDRESS_TOKEN.findall(variant):
                tokens.add(match.rstrip(".").lower())
    return tokens


def _addr_specs(values: Iterable[str]) -> set[str]:
    return {addr.lower() for _name, addr in getaddresses(list(values)) if addr}


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
    allowed = _addr_specs(
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
    from django.contrib.auth import get_user_model
    from django.db.models.functions import Lower

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


# --- layer 3: the transports --------------------------------------------------------------


def _request_params(payload: Any) -> dict[str, Any] | None:
    get_params = getattr(payload, "get_request_params", None)
    if not callable(get_params):
        return None
    params: dict[str, Any] = get_params(payload.backend.api_url)
    return params


def _json_or_value(data: object) -> object:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


def require_single_recipient_anymail_payload(
    payload: Any, message: EmailMessage, *, params: dict[str, Any] | None = None
) -> None:
    """The provider payload, built by anymail with SEND_DEFAULTS merged, has one recipient.

    `params` are the request parameters about to be posted (the backend passes the
    real ones); without them they are built from `payload`, which is what the preview and
    the pre-send check do. Postmark is checked field by field; every other provider by
    collecting each address found under any recipient field of the payload.
    """
    layer = "anymail-payload"
    recipient = the_recipient(message, layer=layer)
    is_batch = getattr(payload, "is_batch", None)
    if callable(is_batch) and is_batch():
        raise GuardViolation(layer, "anymail would send this as a batch", message=message)
    if getattr(payload.backend, "esp_name", "") == "Postmark":
        _require_single_recipient_postmark(payload, message, recipient, params)
    else:
        _require_single_recipient_generic(payload, message, recipient, params)


# The two Postmark endpoints that take exactly one message.
_POSTMARK_SINGLE_ENDPOINTS = frozenset({"email", "email/withTemplate/"})


def _require_single_recipient_postmark(
    payload: Any, message: EmailMessage, recipient: str, params: dict[str, Any] | None
) -> None:
    layer = "anymail-payload"
    backend = payload.backend
    if getattr(backend, "use_bulk_api", False):
        raise GuardViolation(layer, "POSTMARK_USE_BULK_API is on", message=message)
    if params is None:
        params = _request_params(payload)
    if params is None:
        raise GuardViolation(layer, "cannot build the Postmark request", message=message)
    url = str(params.get("url", ""))
    endpoint = url.removeprefix(str(backend.api_url))
    if endpoint not in _POSTMARK_SINGLE_ENDPOINTS:
        raise GuardViolation(
            layer, f"Postmark endpoint {url!r} is not a single-message endpoint", message=message
        )
    data = _json_or_value(params.get("data"))
    if not isinstance(data, dict):
        raise GuardViolation(layer, "the Postmark body is not one JSON message", message=message)
    for key, value in data.items():
        field = field_key(key)
        if field == "to":
            try:
                address = _single_address(value, what="Postmark To")
            except ValueError as error:
                raise GuardViolation(layer, str(error), message=message) from None
            if not _same_address(address, recipient):
                raise GuardViolation(
                    layer, f"Postmark To is {address!r}, expected {recipient!r}", message=message
                )
        elif field in RECIPIENT_FIELDS or field in {"messages", *BATCH_SWITCHES}:
            if value not in (None, "", [], {}):
                raise GuardViolation(layer, f"Postmark {key} is {value!r}", message=message)
        elif field in {"subject", "from", "replyto", "tag"} and _LINE_BREAK.search(str(value)):
            raise GuardViolation(layer, f"Postmark {key} contains a line break", message=message)
    if "To" not in data:
        raise GuardViolation(layer, "the Postmark message has no To", message=message)
    headers = data.get("Headers") or []
    if not isinstance(headers, list):
        raise GuardViolation(layer, "Postmark Headers is not a list", message=message)
    for header in headers:
        name = str(header.get("Name", "")) if isinstance(header, dict) else ""
        value = str(header.get("Value", "")) if isinstance(header, dict) else ""
        if not _HEADER_NAME.fullmatch(name) or _LINE_BREAK.search(value):
            raise GuardViolation(
                layer, f"Postmark header {name!r}: {value!r} is malformed", message=message
            )
        reason = smuggled_header_reason(name, value)
        if reason is not None:
            raise GuardViolation(layer, f"Postmark {reason}", message=message)


def _payload_structures(payload: Any, params: dict[str, Any] | None) -> list[object]:
    if params is None:
        params = _request_params(payload)
    if params is not None:
        return [_json_or_value(params.get(name)) for name in ("data", "params", "files", "json")]
    # Providers that do not post with requests (Amazon SES) keep their call arguments here.
    return [
        _json_or_value(getattr(payload, name))
        for name in ("data", "params")
        if hasattr(payload, name)
    ]


def _strings_in(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings_in(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings_in(item)
    elif hasattr(value, "addr_spec"):
        yield str(value.addr_spec)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


def _require_single_recipient_generic(
    payload: Any, message: EmailMessage, recipient: str, params: dict[str, Any] | None
) -> None:
    layer = "anymail-payload"
    structures = _payload_structures(payload, params)
    if not structures or all(s is None for s in structures):
        raise GuardViolation(layer, "the provider payload cannot be inspected", message=message)
    found: set[str] = set()
    for structure in structures:
        for key, value in walk_items(structure):
            field = field_key(key)
            if field in RECIPIENT_FIELDS:
                found |= address_tokens(_strings_in(value))
            elif field in {"messages", "personalizations"} and isinstance(value, list):
                if len(value) > 1:
                    raise GuardViolation(
                        layer, f"the payload holds {len(value)} {key}", message=message
                    )
            elif field in BATCH_SWITCHES and value:
                raise GuardViolation(layer, f"the payload sets {key}={value!r}", message=message)
            elif field == "name" and isinstance(value, str):
                # Header lists as [{"Name": "Bcc", "Value": ...}] (Postmark-like providers).
                header_reason = smuggled_header_reason(value, "")
                if header_reason is not None:
                    raise GuardViolation(layer, f"the payload {header_reason}", message=message)
            elif field == "headers" and isinstance(value, dict):
                for name, header_value in value.items():
                    if _LINE_BREAK.search(f"{name}{header_value}"):
                        raise GuardViolation(
                            layer, f"payload header {name!r} has a line break", message=message
                        )
                    header_reason = smuggled_header_reason(name, header_value)
                    if header_reason is not None:
                        raise GuardViolation(layer, f"the payload {header_reason}", message=message)
    if {comparable_address(address) for address in found} != {comparable_address(recipient)}:
        raise GuardViolation(
            layer,
            f"the provider payload addresses {sorted(found)!r}, expected only {recipient!r}",
            message=message,
        )


def _rcpt_address(entry: object, *, message: EmailMessage) -> str:
    """The address smtplib will put in RCPT TO for `entry`, if it is one bare address.

    smtplib keeps only what `parseaddr` finds (Django passes "Name <addr>", possibly with
    a folded name); `parseaddr` is lenient and takes the first of several addresses, so
    `getaddresses` must agree that there is only one.
    """
    layer = "smtp-envelope"
    if not isinstance(entry, str):
        raise GuardViolation(layer, f"RCPT TO entry {entry!r} is not a string", message=message)
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

    Without arguments the envelope and bytes are computed exactly as Django's SMTP
    backend does; the backend also calls this with the real `sendmail` arguments.
    """
    layer = "smtp-envelope"
    if envelope is None:
        encoding = _encoding(message)
        try:
            envelope = [sanitize_address(addr, encoding) for addr in message.recipients()]
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
    if expected is not None and not _same_address(address, expected):
        raise GuardViolation(
            layer, f"RCPT TO {address!r}, but the delivery is for {expected!r}", message=message
        )
    if raw is None:
        raw = _serialize(message, layer=layer)
    _require_serialized_recipient(raw, address, message=message, layer=layer)


# --- layer 5: after the send ----------------------------------------------------------------


def require_provider_recipients(message: EmailMessage) -> None:
    """The provider's own report of the recipients is exactly the one address.

    A detector, not a blocker: the message has already left. Anymail fills
    `anymail_status.recipients` while parsing the provider's response (Postmark's
    response carries its own "To"), and the raw response is read here as well.
    """
    layer = "post-send"
    status = getattr(message, "anymail_status", None)
    response = getattr(status, "esp_response", None)
    if status is None or response is None:
        return  # not sent through anymail, or nothing came back to compare
    recipient = the_recipient(message, layer=layer)
    reported = {comparable_address(str(address)) for address in (status.recipients or {})}
    if reported != {comparable_address(recipient)}:
        raise GuardViolation(
            layer,
            f"the provider reports recipients {sorted(reported)!r}, expected only {recipient!r}",
            message=message,
            sent=True,
        )
    try:
        body = response.json()
    except (AttributeError, ValueError):
        return
    if isinstance(body, list):
        if len(body) != 1:
            raise GuardViolation(
                layer, f"the provider answered for {len(body)} messages", message=message, sent=True
            )
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("To"), str):
        provider_to = [addr for _name, addr in getaddresses([body["To"]])]
        if len(provider_to) != 1 or not _same_address(provider_to[0], recipient):
            raise GuardViolation(
                layer,
                f"the provider says it sent To {body['To']!r}, expected only {recipient!r}",
                message=message,
                sent=True,
            )


# --- layer 4 at send time: the settings -----------------------------------------------------


def require_safe_mail_settings() -> None:
    """The anymail settings the system check refuses, refused again when sending.

    Workers never run `manage.py check`, so the backend repeats the check itself.
    """
    from campaigns.checks import anymail_settings_errors

    errors = anymail_settings_errors()
    if errors:
        raise GuardViolation("settings", "; ".join(str(error.msg) for error in errors))


# --- registries (tests narrow these; there is deliberately no setting) --------------------

PreSendLayer = Callable[[EmailMessage], None]
PRE_SEND_LAYERS: list[PreSendLayer] = [
    require_single_recipient,
    require_clean_headers,
    require_no_merge,
    require_no_foreign_addresses,
]
SETTINGS_LAYERS: list[Callable[[], None]] = [require_safe_mail_settings]
ANYMAIL_PAYLOAD_LAYERS: list[Callable[..., None]] = [require_single_recipient_anymail_payload]
SMTP_ENVELOPE_LAYERS: list[Callable[..., None]] = [require_single_smtp_envelope]
POST_SEND_LAYERS: list[PreSendLayer] = [require_provider_recipients]


# --- helpers for the backend, the review page and the pre-flight checks ---------------------


def is_anymail(transport: object) -> bool:
    from anymail.backends.base import AnymailBaseBackend

    return isinstance(transport, AnymailBaseBackend)


def check_before_send(message: EmailMessage, transport: object) -> None:
    """Run every enabled pre-send layer for `transport`; raise the first violation.

    For anymail this builds a throwaway payload exactly as the backend will (defaults
    merged), so a violation in any message of a batch is found before anything is sent.
    """
    for layer in PRE_SEND_LAYERS:
        layer(message)
    if is_anymail(transport):
        if ANYMAIL_PAYLOAD_LAYERS:
            payload = build_provider_payload(message, transport)
            for payload_layer in ANYMAIL_PAYLOAD_LAYERS:
                payload_layer(payload, message)
    else:
        for envelope_layer in SMTP_ENVELOPE_LAYERS:
            envelope_layer(message)


def build_provider_payload(message: EmailMessage, transport: Any) -> Any:
    """The payload the anymail `transport` would post for `message`, without sending."""
    return transport.build_message_payload(message, transport.send_defaults)


def preflight(message: EmailMessage, transport: object | None = None) -> list[GuardViolation]:
    """Every violation any layer finds in `message` (not only the first), sending nothing.

    For the review page's pre-flight checks. Uses settings.EMAIL_TRANSPORT by default.
    """
    if transport is None:
        transport = get_connection(settings.EMAIL_TRANSPORT)
    checks: list[Callable[[], None]] = [partial(layer, message) for layer in PRE_SEND_LAYERS]
    checks.extend(SETTINGS_LAYERS)
    if is_anymail(transport):
        checks.extend(
            partial(_payload_check, layer, message, transport) for layer in ANYMAIL_PAYLOAD_LAYERS
        )
    else:
        checks.extend(partial(layer, message) for layer in SMTP_ENVELOPE_LAYERS)
    violations: list[GuardViolation] = []
    for check in checks:
        try:
            check()
        except GuardViolation as violation:
            violation.message = violation.message or message
            violations.append(violation)
    return violations


def _payload_check(layer: Callable[..., None], message: EmailMessage, transport: object) -> None:
    try:
        payload = build_provider_payload(message, transport)
    except AnymailError as error:
        raise GuardViolation(
            "anymail-payload", f"the provider payload cannot be built: {error}", message=message
        ) from None
    layer(payload, message)


def provider_payload_preview(message: EmailMessage) -> str | None:
    """The JSON the EMAIL_TRANSPORT's HTTP API would receive for `message`, pretty-printed.

    Built by the backend's own code (payload, SEND_DEFAULTS, serialization) without
    sending. None when the transport is not an anymail HTTP backend. Credentials that
    some providers put in the body (Mandrill's "key") are redacted.
    """
    from anymail.backends.base_requests import AnymailRequestsBackend

    transport = get_connection(settings.EMAIL_TRANSPORT)
    if not isinstance(transport, AnymailRequestsBackend):
        return None
    payload = build_provider_payload(message, transport)
    params = payload.get_request_params(transport.api_url)
    data = _redact(_json_or_value(params.get("data")))
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def _redact(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: "[redacted]" if field_key(key) in _SECRET_KEYS else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value
