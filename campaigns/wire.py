"""The bytes of a campaign message, written directly instead of through `email.generator`.

Django serializes a message by building a tree of `email.message.Message` objects and
flattening it with the standard library's generator, which folds every header through
`email.header.Header`. For the one shape the builder makes (a text part, optionally with
one HTML alternative, UTF-8, no attachments, every header value ASCII) the result is
fully determined by a few rules, and writing it directly costs a fraction of that.

`direct_bytes` writes exactly what `message.message().as_bytes(linesep="\\r\\n")` writes,
byte for byte, or returns None for anything outside that shape (the caller then takes
Django's path). Headers that fit on one line as plain words are written as they are;
any other header is folded by the very `compat32` policy call the generator makes.
`tests/campaigns/test_wire.py` holds the two equal over hostile and generated messages.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from email import policy
from email.header import Header

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.message import RFC5322_EMAIL_LINE_LENGTH_LIMIT

CRLF = "\r\n"
# The generator's own policy for Django's messages, with the line ending Django asks for.
_COMPAT32 = policy.compat32.clone(linesep=CRLF)
_MAX_LINE = 78  # compat32's max_line_length: shorter header lines are never folded
# Printable ASCII words separated by single spaces: `Header` leaves such a value as it is
# when it fits on the line (no leading, trailing or doubled whitespace to normalize).
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")  # what the generator turns into its line ending
# Headers Django's `message()` sets itself or treats specially; extra headers with these
# names take Django's path. (Date and Message-ID are the builder's own extra headers,
# written in their place among the others, as Django does.)
_OWN_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "content-type",
        "mime-version",
        "content-transfer-encoding",
    }
)


def pinned_boundary(seed: str, index: int, contents: Sequence[str]) -> str:
    """The MIME boundary of the `index`-th part (in `Message.walk` order) of the message
    whose Message-ID is `seed`: derived from the content, never random, and never a
    string that occurs in any of its `contents`."""
    attempt = 0
    while True:
        material = f"{seed}\x00{index}\x00{attempt}".encode()
        boundary = "=_cs" + hashlib.sha256(material).hexdigest()[:40]
        # A body that happens to contain the boundary would split the message.
        if not any(boundary in content for content in contents):
            return boundary
        attempt += 1


def header_line(name: str, value: str) -> str:
    """`name: value` as the generator writes a header field holding the ASCII `value`."""
    if len(name) + 2 + len(value) <= _MAX_LINE and _PLAIN_VALUE.fullmatch(value):
        return f"{name}: {value}{CRLF}"
    if not _PRINTABLE.fullmatch(value):
        return _COMPAT32.fold(name, value)
    # compat32 folds printable ASCII by its length and by where its spaces, commas and
    # semicolons are (`email.header._ValueFormatter`: it splits only there, and only
    # inserts line breaks and continuation spaces); the other characters are carried
    # through in order. So every value with the same outline folds the same way: fold
    # the outline once, then put this value's characters into its placeholders.
    outline = value.translate(_OUTLINE)
    plan = _FOLD_PLANS.get((name, outline))
    if plan is None:
        plan = _fold_plan(name, outline)
        if plan is None:
            return _COMPAT32.fold(name, value)
        if len(_FOLD_PLANS) >= _FOLD_PLANS_KEPT:
            _FOLD_PLANS.clear()
        _FOLD_PLANS[name, outline] = plan
    pieces, tail = plan
    return "".join([text + value[start:end] for text, start, end in pieces]) + tail


# Printable ASCII, the space included: no tab, no line break and nothing `str.splitlines`
# would cut at, so only the length and the fold points shape the folding.
_PRINTABLE = re.compile(r"[ -~]*")
_FOLD_POINTS = " ,;"  # email.header's split characters for ASCII (tab is not printable)
_PLACEHOLDER = "x"
_OUTLINE = str.maketrans(
    {chr(c): _PLACEHOLDER for c in range(0x21, 0x7F) if chr(c) not in _FOLD_POINTS}
)
# One plan per (name, outline); a campaign's messages have a handful (the boundary's
# Content-Type, the unsubscribe URLs by length). Cleared when full, never unbounded.
_FOLD_PLANS: dict[tuple[str, str], tuple[list[tuple[str, int, int]], str]] = {}
_FOLD_PLANS_KEPT = 512


def _fold_plan(name: str, outline: str) -> tuple[list[tuple[str, int, int]], str] | None:
    """compat32's folding of `outline` as (inserted text, value slice) pieces and a tail.

    Each placeholder in the folded outline is the next non-fold-point character of the
    value; runs of them become one slice. Everything else (fold points, line breaks,
    continuation spaces) is the same text for every value with this outline. None if
    the folded outline is not of that form (then the value is folded as it is).
    """
    head = f"{name}: "
    folded = _COMPAT32.fold(name, outline)
    if not folded.startswith(head):
        return None
    positions = [index for index, char in enumerate(outline) if char == _PLACEHOLDER]
    pieces: list[tuple[str, int, int]] = []
    text: list[str] = [head]
    taken = 0
    for char in folded[len(head) :]:
        if char != _PLACEHOLDER or taken == len(positions):
            text.append(char)
            continue
        position = positions[taken]
        taken += 1
        if not text and pieces and pieces[-1][2] == position:
            pieces[-1] = (pieces[-1][0], pieces[-1][1], position + 1)
        else:
            pieces.append(("".join(text), position, position + 1))
            text = []
    if taken != len(positions) or _PLACEHOLDER in "".join(text):
        return None
    return pieces, "".join(text)


def _stored_as_is(value: str) -> bool:
    """Django stores header values unchanged if they are ASCII without a line break
    (anything else it encodes, or refuses with BadHeaderError)."""
    return value.isascii() and "\r" not in value and "\n" not in value


def _subject_value(subject: str, serialized: str) -> str:
    """What the Subject field holds: `serialized` when the builder encoded the subject,
    else the text after Django's `Header(subject).encode()` (its rule for ASCII subjects)."""
    if serialized != subject:
        return serialized
    if len(subject) <= _MAX_LINE - len("Subject: ") and _PLAIN_VALUE.fullmatch(subject):
        return subject  # what Header().encode() returns for a short plain value
    return Header(subject).encode()


def _text_part(text: str, subtype: str) -> tuple[list[str], bytes] | None:
    """Headers and body of Django's SafeMIMEText for `text` in UTF-8, or None when
    Django would encode it as quoted-printable (a line over 998 bytes) or refuse it."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(data) > RFC5322_EMAIL_LINE_LENGTH_LIMIT and any(
        len(line.encode("utf-8")) > RFC5322_EMAIL_LINE_LENGTH_LIMIT for line in text.splitlines()
    ):
        return None
    headers = [
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}',
        f"MIME-Version: 1.0{CRLF}",
        f"Content-Transfer-Encoding: {'7bit' if text.isascii() else '8bit'}{CRLF}",
    ]
    body = _LINE_BREAKS.sub(CRLF, text).encode("utf-8")
    return headers, body


def direct_bytes(message: EmailMessage, *, subject: str, boundary_seed: str) -> bytes | None:
    """`message.message().as_bytes(linesep="\\r\\n")` for a message of the builder's shape,
    with `subject` as the serialized Subject value and boundaries pinned from
    `boundary_seed` (as `pinned_boundary`); None for any other message."""
    if (
        message.attachments
        # Recipients beyond To (which the guard refuses anyway) take Django's path.
        or list(message.recipients()) != list(message.to)
        or "\n" in str(message.subject)  # Django refuses these: let it say so
        or "\r" in str(message.subject)
        or message.content_subtype != "plain"
        or (message.encoding or settings.DEFAULT_CHARSET).lower() != "utf-8"
        or any(name.lower() in _OWN_HEADERS for name in message.extra_headers)
    ):
        return None
    alternatives = list(getattr(message, "alternatives", ()))
    if len(alternatives) > 1 or getattr(message, "alternative_subtype", "alternative") != (
        "alternative"
    ):
        return None
    headers = message.extra_headers
    date = headers.get("Date")
    message_id = headers.get("Message-ID")
    if not isinstance(date, str) or not isinstance(message_id, str):
        return None  # Django would invent them (or the builder's message is unfinished)

    text = _text_part(str(message.body), "plain")
    if text is None:
        return None
    top: list[str]
    html: tuple[list[str], bytes] | None = None
    boundary = ""
    if alternatives:
        content, mimetype = alternatives[0]
        if mimetype != "text/html" or not isinstance(content, str) or not message.body:
            return None
        html = _text_part(content, "html")
        if html is None:
            return None
        boundary = pinned_boundary(boundary_seed, 0, [str(message.body), content])
        top = [
            header_line("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
            f"MIME-Version: 1.0{CRLF}",
        ]
    else:
        top = list(text[0])

    fields: list[tuple[str, str]] = [("From", str(message.from_email))]
    if message.to:
        fields.append(("To", ", ".join(str(value) for value in message.to)))
    if message.reply_to:
        fields.append(("Reply-To", ", ".join(str(value) for value in message.reply_to)))
    fields.extend((str(name), str(value)) for name, value in headers.items())
    if not _stored_as_is("".join(value for _name, value in fields)) or not subject.isascii():
        return None
    top.append(header_line("Subject", _subject_value(str(message.subject), subject)))
    top.extend(header_line(name, value) for name, value in fields)
    top.append(CRLF)
    head = "".join(top).encode("ascii")

    if html is None:
        return head + text[1]
    html_headers, html_body = html
    delimiter = f"--{boundary}{CRLF}".encode("ascii")
    parts = [
        head,
        delimiter,
        "".join(text[0]).encode("ascii"),
        CRLF.encode("ascii"),
        text[1],
        CRLF.encode("ascii"),
        delimiter,
        "".join(html_headers).encode("ascii"),
        CRLF.encode("ascii"),
        html_body,
        f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
    ]
    return b"".join(parts)
