"""The guard's vocabulary: the violation it raises, and the names that mean recipients.

Field names are compared after `field_key` (lowercase, "_" as "-", Mailgun's "h:"
prefix removed), so the same list serves messages, headers, settings and provider payloads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from anymail.utils import UNSET
from django.core.mail import EmailMessage


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

# What reads as local@domain; deliberately loose, it only has to find candidates. Searched
# outward from each "@" (see address_tokens_in): a left-to-right regex search for a local
# part takes time that grows with the square of a long run of letters.
_LOCAL_CHARACTERS = r"[\w.!#$%&'*+/=?^`{|}~-]"
_LOCAL_PART_REVERSED = re.compile(_LOCAL_CHARACTERS + "++")
_PLAIN_LOCAL_PART_REVERSED = re.compile(r"[\w.+-]++")
_DOMAIN = re.compile(r"[\w-]++(?:\.[\w-]++)+")
# An "@" between a local-part character and something that can start a dotted domain.
_CANDIDATE_AT = re.compile(rf"(?<={_LOCAL_CHARACTERS})@(?=[\w-]++\.[\w-])")
# CR, LF and every other character some parser treats as a line break, plus NUL.
LINE_BREAK = re.compile("[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# RFC 5322 field name: printable ASCII except the colon.
HEADER_NAME = re.compile(r"[!-9;-~]+")
SECRET_KEYS = frozenset({"key", "api-key", "apikey", "token", "server-token", "password", "secret"})


def field_key(name: object) -> str:
    key = str(name).strip().lower().replace("_", "-")
    return key[2:] if key.startswith("h:") else key


def present(message: EmailMessage, attr: str) -> bool:
    return getattr(message, attr, UNSET) is not UNSET


def address_tokens_in(text: str) -> Iterator[str]:
    """Every local@domain in `text`, lower-cased, in linear time.

    For each "@" the local part is read backwards and the domain forwards; neither run
    can cross another "@", so every character is read at most twice. Overlapping
    candidates ("a@b.c@d.e" gives both) are all reported: more candidates is safe here.
    """
    if "@" not in text:
        return
    reversed_text = text[::-1]
    size = len(text)
    for candidate in _CANDIDATE_AT.finditer(text):
        at = candidate.start()
        local = _LOCAL_PART_REVERSED.match(reversed_text, size - at)
        domain = _DOMAIN.match(text, at + 1)
        if local is None or domain is None:
            continue
        address = f"@{domain.group()}".rstrip(".").lower()
        yield f"{local.group()[::-1]}{address}".lower()
        # "a@b.com!c@d.org" reads as c@d.org too: also the tail of plain address characters.
        plain = _PLAIN_LOCAL_PART_REVERSED.match(reversed_text, size - at)
        if plain is not None and len(plain.group()) < len(local.group()):
            yield f"{plain.group()[::-1]}{address}".lower()


def smuggled_header_reason(name: object, value: object) -> str | None:
    key = field_key(name)
    if key in RECIPIENT_FIELDS or key in BATCH_SWITCHES or key.startswith("resent-"):
        return f"header {name!s} names recipients"
    if key in SENDER_HEADERS:
        return None
    if next(address_tokens_in(str(value)), None) is not None:
        return f"header {name!s} carries an address"
    return None


def esp_extra_reason(extra: object) -> str | None:
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
