"""What the project accepts about a person: one bare address, header-safe text, field names.

`single_address_error` is the project's one address validator, used by the user import,
audience uploads, the delivery ledger and the send guard. It accepts exactly one bare
address (`local@domain`) and refuses anything that any of the parsers on the way to the
provider could read as zero or several recipients.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from email import policy
from email.errors import HeaderParseError
from email.utils import getaddresses

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# C0, DEL, C1 and the Unicode line/paragraph separators: any of them in a header value
# can end the header early in some parser (CR/LF injection being the famous case). Names
# and attribute values end up in To and Subject, so the import refuses them as well.
HEADER_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Unicode category Cf (format characters), as of Unicode 14 (Python 3.11): the bidirectional
# overrides and isolates, the zero-width space, non-joiner and joiner, the word joiner,
# the byte-order mark, the soft hyphen and the tag characters. They change what a reader
# sees without being seen. A test keeps this list equal to unicodedata's.
_FORMAT_RANGES = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
FORMAT_CHARACTERS = re.compile(f"[{_FORMAT_RANGES}\u200b-\u200f]")
ZERO_WIDTH_JOINER = "\u200d"

# Bodies may hold tabs and line breaks; nothing else below U+0020, no DEL, no C1.
BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# unicodedata has no names for C0 and C1 controls.
_CONTROL_NAMES = {
    "\x00": "NUL",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x85": "next line",
}


def describe_character(char: str) -> str:
    """U+XXXX and the character's name, for error messages."""
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "").lower()
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def _joins_emoji(value: str, index: int) -> bool:
    """A zero-width joiner inside an emoji sequence (👩‍💻): symbol, joiner, symbol."""
    before = value[index - 1] if index > 0 else ""
    after = value[index + 1] if index + 1 < len(value) else ""
    return (
        bool(before)
        and bool(after)
        and (unicodedata.category(before) in {"So", "Sk"} or before == "\ufe0f")
        and unicodedata.category(after) == "So"
    )


def _first_problem(value: str, control: re.Pattern[str]) -> tuple[int, str] | None:
    match = control.search(value)
    if match is not None:
        why = f"contains the control character {describe_character(match.group())}"
        return match.start(), why
    for match in FORMAT_CHARACTERS.finditer(value):
        if match.group() == ZERO_WIDTH_JOINER and _joins_emoji(value, match.start()):
            continue
        why = f"contains the invisible character {describe_character(match.group())}"
        return match.start(), why
    return None


def person_text_error(value: str) -> tuple[int, str] | None:
    """(position, why) if `value` may not be a name, an attribute value or a subject.

    One line of visible text: no control character or line break, no bidi override, no
    invisible format character (a zero-width joiner inside an emoji sequence is fine). The same rule wherever such text enters (admin forms, the
    CSV import, subject templates).
    """
    return _first_problem(value, HEADER_CONTROL)


def explain_person_text_error(value: str) -> str | None:
    """`person_text_error` in words, with a 1-based position: for form and import errors."""
    error = person_text_error(value)
    if error is None:
        return None
    position, why = error
    return f"{why} at character {position + 1}"


def validate_person_text(value: str) -> None:
    """Django validator form of `person_text_error`: for a name shown in a header."""
    why = explain_person_text_error(value)
    if why is not None:
        raise ValidationError("%(why)s", code="person_text", params={"why": why})


def body_text_error(value: str) -> tuple[int, str] | None:
    """(position, why) if `value` may not be the literal text of a message body.

    Line breaks and tabs are fine; other controls, bidi overrides and invisible format
    characters are not (a zero-width joiner inside an emoji sequence excepted).
    """
    return _first_problem(value, BODY_CONTROL)


# The account fields a template sees for every recipient, and the value the message
# builder adds itself. An imported attribute column may not take one of these names.
ACCOUNT_FIELDS = ("email", "first_name", "last_name", "locale")
BUILDER_FIELDS = ("unsubscribe_url",)
# Characters that separate, group or quote addresses in some parser. None is legal in
# the bare addresses we accept, so refusing them up front closes every ambiguity.
_FORBIDDEN = set(' ,;<>"()[]\\:')

# A plain addr-spec: dot-atoms of ordinary characters, then a host name of two or more
# labels, ASCII only. No parser reads it as anything but itself (no quote, comment,
# bracket, separator or encoded word can occur in it), so the standard-library parsers
# are asked only about other values; tests/accounts/test_validators.py holds them to it.
ADDR_ATOM = r"[A-Za-z0-9!#$%&'*+/^_{|}~-]+"
HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
PLAIN_ADDR_SPEC = rf"{ADDR_ATOM}(?:\.{ADDR_ATOM})*@{HOST_LABEL}(?:\.{HOST_LABEL})+"
_PLAIN_ADDRESS = re.compile(PLAIN_ADDR_SPEC, re.ASCII)
_django_email = EmailValidator()


def _policy_addresses(value: str) -> list[str]:
    try:
        header = policy.default.header_factory("To", value)
        return [address.addr_spec for address in header.addresses]
    except (HeaderParseError, IndexError, ValueError):
        return []


def single_address_error(value: object) -> str | None:
    """Why `value` is not exactly one bare address, or None if it is."""
    if not isinstance(value, str) or not value:
        return "is empty"
    return _single_address_error(value)


# A pure function of the string, asked about the same recipient several times per message
# (builder, guard layers, envelope): remember the latest answers.
@functools.lru_cache(maxsize=4096)
def _single_address_error(value: str) -> str | None:
    if CONTROL_CHARACTERS.search(value):
        return "contains a control character or line break"
    invisible = FORMAT_CHARACTERS.search(value)
    if invisible is not None:
        # A domain may be internationalized, but never invisible: IDNA drops a zero-width
        # space silently (the address shown is not the one mailed) and a bidi override
        # makes the shown address read backwards.
        return f"contains the invisible character {describe_character(invisible.group())}"
    if value != value.strip():
        return "has leading or trailing spaces"
    if value.startswith('"') or '"' in value:
        return "has a quoted local part"
    bad = sorted(_FORBIDDEN.intersection(value))
    if bad:
        return "contains " + " ".join(repr(ch) for ch in bad) + " (one bare address only)"
    if value.count("@") != 1:
        return "must contain exactly one @"
    if not _PLAIN_ADDRESS.fullmatch(value):
        parsed = getaddresses([value])
        if len(parsed) != 1 or parsed[0][1] != value or parsed[0][0]:
            return "does not parse as exactly one address"
        if _policy_addresses(value) != [value]:
            return "does not parse as exactly one address"
    try:
        _django_email(value)
    except ValidationError:
        return "is not a valid email address"
    return None


def validate_single_address(value: str) -> None:
    """Django validator form of `single_address_error`."""
    error = single_address_error(value)
    if error is not None:
        raise ValidationError(
            "%(value)r %(error)s.", code="invalid_address", params={"value": value, "error": error}
        )


def normalize_address(value: str) -> str:
    """Canonical form used for uniqueness and suppression lookups."""
    return value.strip().lower()
