"""One reading per message: the header block strictly, and one shared result per content.

The pre-flight and the backend check the same message; the second check may reuse the
first only while nothing the result depends on has changed.
"""

from __future__ import annotations

import random
import re
import smtplib
from email.utils import getaddresses

import pytest
from django.core.mail.message import sanitize_address

from campaigns.guard import addresses
from campaigns.guard import layers as guard_layers
from campaigns.guard.addresses import (
    header_block,
    require_serialized_recipient,
    sanitized_address,
)
from campaigns.guard.message import require_single_recipient
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import ANN, BOB, delivery_message

pytestmark = pytest.mark.django_db


def test_a_header_line_that_is_no_field_refuses_the_message() -> None:
    # Lenient parsers read everything after "oops" as body; an MTA may not.
    raw = b"From: a@example.com\r\noops\r\nTo: " + BOB.encode() + b"\r\n\r\nbody\r\n"
    with pytest.raises(GuardViolation, match="neither a field nor a continuation"):
        require_serialized_recipient(raw, ANN, message=delivery_message(), layer="recipients")


def _accepted_line_by_line(block: bytes) -> bool:
    """The strict reading, spelled out: every line a field or (after the first) a
    continuation, none holding a CR or NUL."""
    for number, line in enumerate(re.split(rb"\r?\n", block)):
        if b"\r" in line or b"\x00" in line:
            return False
        if line[:1] in (b" ", b"\t") and number > 0:
            continue
        if not re.match(rb"[!-9;-~]+:", line):
            return False
    return True


def test_the_whole_block_pattern_accepts_exactly_what_the_line_rules_accept() -> None:
    rng = random.Random(7)
    pieces = [
        b"To:",
        b"X-A: v",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b"a",
        b":",
        b"\xc3\xa9",
    ]
    accepted = refused = 0
    for _ in range(20000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 9))) + b"\r\n\r\nbody"
        block = raw[: re.search(rb"\r?\n\r?\n", raw).start()]  # type: ignore[union-attr]
        expected = _accepted_line_by_line(block)
        try:
            header_block(raw, message=delivery_message(), layer="recipients")
        except GuardViolation:
            assert not expected, block
            refused += 1
        else:
            assert expected, block
            accepted += 1
    assert accepted > 500 and refused > 500


def test_a_bare_cr_in_the_header_block_refuses_the_message() -> None:
    raw = b"To: " + ANN.encode() + b"\rCc: " + BOB.encode() + b"\r\n\r\nbody\r\n"
    with pytest.raises(GuardViolation, match="bare CR"):
        header_block(raw, message=delivery_message(), layer="recipients")


def test_only_the_header_block_is_read_and_a_second_recipient_there_is_found() -> None:
    raw = (
        b"To: " + ANN.encode() + b"\r\nSubject: x\r\nCc: " + BOB.encode() + b"\r\n\r\n"
        b"To: " + BOB.encode() + b"\r\n"
    )
    with pytest.raises(GuardViolation, match="expected only"):
        require_serialized_recipient(raw, ANN, message=delivery_message(), layer="recipients")


def test_a_refusal_is_never_remembered_as_a_pass() -> None:
    addresses._VERIFIED_BLOCKS.clear()  # an earlier test's message to Bob passed, rightly
    raw = b"To: " + ANN.encode() + b", " + BOB.encode() + b"\r\n\r\nbody\r\n"
    for _ in range(2):
        with pytest.raises(GuardViolation):
            require_serialized_recipient(raw, ANN, message=delivery_message(), layer="recipients")
    assert not any(BOB.encode() in block for block, _ in addresses._VERIFIED_BLOCKS)


def test_the_same_message_is_serialized_once_until_it_changes() -> None:
    message = delivery_message()
    first = addresses.serialize(message, layer="recipients")
    assert addresses.serialize(message, layer="recipients") is first
    message.to.append(BOB)  # changed in place: the bytes are made again
    again = addresses.serialize(message, layer="recipients")
    assert BOB.encode() in again and BOB.encode() not in first


def test_the_backend_check_reuses_the_preflight_only_for_the_unchanged_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting_layer(message: object) -> None:
        calls.append("ran")

    monkeypatch.setattr(guard_layers, "PRE_SEND_LAYERS", [counting_layer])
    monkeypatch.setattr(guard_layers, "SMTP_ENVELOPE_LAYERS", [])
    transport = object()
    message = delivery_message()
    assert guard_layers.preflight(message, transport) == []
    guard_layers.check_before_send(message, transport)
    assert calls == ["ran"]
    # Another transport, another layer list, or any change to the message: run again.
    guard_layers.check_before_send(message, object())
    assert calls == ["ran", "ran"]
    message.cc = [BOB]
    guard_layers.check_before_send(message, transport)
    assert calls == ["ran", "ran", "ran"]


def test_a_message_passed_by_the_preflight_is_refused_once_a_layer_is_enabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guard_layers, "PRE_SEND_LAYERS", [])
    monkeypatch.setattr(guard_layers, "SMTP_ENVELOPE_LAYERS", [])
    transport = object()
    message = delivery_message(cc=[BOB])
    assert guard_layers.preflight(message, transport) == []
    monkeypatch.setattr(guard_layers, "PRE_SEND_LAYERS", [require_single_recipient])
    with pytest.raises(GuardViolation, match="Cc"):
        guard_layers.check_before_send(message, transport)


@pytest.mark.parametrize(
    "value",
    ["Zoë <zoe@example.org>", '"a@b" <c@d.example>', "x@exämple.org", "a@b.example, c@d.example"],
)
def test_the_remembered_sanitize_address_answers_as_djangos_every_time(value: str) -> None:
    for _ in range(2):  # the first answer is computed, the second remembered
        try:
            expected = sanitize_address(value, "utf-8")
        except ValueError as error:
            with pytest.raises(ValueError, match=re.escape(str(error))):
                sanitized_address(value, "utf-8")
        else:
            assert sanitized_address(value, "utf-8") == expected
    # The encoding is part of what is remembered.
    if value.startswith("Zoë"):
        assert sanitized_address(value, "iso-8859-1") == sanitize_address(value, "iso-8859-1")


# --- The canonical form every parser reads alike ------------------------------------------

HOSTILE_NAMES = [
    "Smith, John",
    'Jane "JJ" <eve@evil.example>',
    "bob@example.net",
    "=?utf-8?q?x?=",
    "Zoë\r\nBcc: eve@evil.example",
    "山田 太郎",
    "a" * 200,
]


def _canonical_corpus() -> list[str]:
    from campaigns.rendering import encoded_words, format_address

    values = [format_address(name, ANN) for name in ("Ann", "O'Brien", "Zoë Ünal", *HOSTILE_NAMES)]
    # Encoded words that decode to separators, brackets and other addresses stay one name.
    values += [f"{encoded_words(name)} <{ANN}>" for name in HOSTILE_NAMES]
    values += [ANN, f"Ann\t <{ANN}>", f"Ann  Lee <{ANN}>"]
    return values


def test_every_parser_reads_a_canonical_mailbox_as_its_one_address() -> None:
    # The guard skips the four parsers for the builder's own form; for every value that
    # form takes, all four must read exactly that address.
    taken = 0
    for value in _canonical_corpus():
        canonical = addresses.canonical_address(value)
        if canonical is None:
            continue
        taken += 1
        readings = addresses._parsed_by_every_parser(value, "utf-8")
        assert all(found == [canonical] for found in readings.values()), (value, readings)
    assert taken >= len(_canonical_corpus()) - 1


def test_the_envelope_of_a_canonical_mailbox_is_the_rcpt_to_django_would_send() -> None:
    # The guarded backend hands smtplib the bare addr-spec of a canonical value instead of
    # Django's sanitize_address: RCPT TO must come out the same, and read as that address.
    for value in _canonical_corpus():
        try:
            django_entry = sanitize_address(value, "utf-8")
        except ValueError:
            with pytest.raises(ValueError):
                addresses.envelope_address(value, "utf-8")
            continue
        entry = addresses.envelope_address(value, "utf-8")
        assert smtplib.quoteaddr(entry) == smtplib.quoteaddr(django_entry)
        if addresses.canonical_address(value) is not None:
            assert entry == ANN
            assert [addr for _name, addr in getaddresses([entry])] == [ANN]
    # Anything else still goes through Django's own sanitize_address.
    other = 'Ann "A" <ann@example.org>'
    assert addresses.envelope_address(other, "utf-8") == sanitize_address(other, "utf-8")


def test_an_encoded_name_with_a_line_break_gets_the_full_reading() -> None:
    # Django decodes the name and refuses a line break in it: not the canonical form, so
    # the full reading runs, and refuses it.
    from campaigns.rendering import encoded_words

    name = encoded_words("Zoë\r\nBcc: eve@evil.example")
    value = f"{name} <{ANN}>"
    assert addresses.canonical_address(value) is None
    with pytest.raises(GuardViolation, match="not exactly one address"):
        require_single_recipient(delivery_message(to=[value]))


@pytest.mark.parametrize(
    "value",
    [
        f"alice@example.net <{ANN}>",
        f'"Smith, John" <{ANN}>',
        f"Smith, John <{ANN}>",
        f"{ANN}, {BOB}",
        f"Ann <{ANN}>, {BOB}",
        f"Ann <{ANN}> {BOB}",
        f"=?utf-8?q?Ann?= <{ANN}>",
        f"Ann (comment) <{ANN}>",
        f"<{ANN}>",
        f"Ann <{ANN}",
        "Ann <a..b@example.org>",
        f"Zoë <{ANN}>",
        f"undisclosed-recipients:; <{ANN}>",
    ],
)
def test_anything_else_is_not_taken_for_canonical(value: str) -> None:
    # These get the full reading by every parser (and most of them are refused by it).
    assert addresses.canonical_address(value) is None


def test_a_second_recipient_field_in_canonical_form_is_still_found() -> None:
    # Each field alone is canonical; two recipient fields take the full reading and fail.
    raw = b"To: Ann <" + ANN.encode() + b">\r\nCC: " + BOB.encode() + b"\r\n\r\nbody\r\n"
    assert [
        name
        for name, _ in addresses.recipient_fields(
            header_block(raw, message=delivery_message(), layer="x")
        )
    ] == ["To", "CC"]
    with pytest.raises(GuardViolation, match="expected only"):
        require_serialized_recipient(raw, ANN, message=delivery_message(), layer="recipients")


def test_a_folded_canonical_to_is_read_unfolded() -> None:
    from campaigns.rendering import encoded_words

    name = encoded_words("Zoë " * 30)
    raw = b"To: " + name.replace(" ", "\r\n ").encode() + b"\r\n <" + ANN.encode() + b">\r\n\r\nx"
    block = header_block(raw, message=delivery_message(), layer="x")
    ((field, value),) = addresses.recipient_fields(block)
    assert field == "To" and addresses.canonical_address(value) == ANN
    require_serialized_recipient(raw, ANN, message=delivery_message(), layer="recipients")
    with pytest.raises(GuardViolation):
        require_serialized_recipient(raw, BOB, message=delivery_message(), layer="recipients")


def test_plain_ascii_text_has_one_reading_as_the_full_variants_agree() -> None:
    # shown_variants takes ASCII text without "&", "%" or "<" as is; every step of the
    # full reading must leave such text unchanged, or the content layer would miss a form.
    import html
    import unicodedata
    from urllib.parse import unquote

    from accounts.validators import FORMAT_CHARACTERS

    texts = [
        "Hello Ann, write to bob@example.net or BOB(at)example.net.",
        "Price: 10 USD; see https://example.com/a?b=c#d > e",
        "".join(chr(c) for c in range(32, 127) if chr(c) not in "&%<"),
        "tab\tand\nnewline\r\n",
    ]
    for text in texts:
        unescaped = html.unescape(text)
        full = {
            FORMAT_CHARACTERS.sub("", unicodedata.normalize("NFKC", variant))
            for variant in (text, unescaped, unquote(unescaped), html.unescape(text))
        }
        assert full == {text}
        assert list(addresses.shown_variants(text)) == [text]
    # Each variant of ASCII text is read as it is: NFKC leaves ASCII alone and no format
    # character is ASCII (shown_variants skips both for ASCII variants).
    every_ascii = "".join(chr(c) for c in range(128))
    assert unicodedata.normalize("NFKC", every_ascii) == every_ascii
    assert not FORMAT_CHARACTERS.search(every_ascii)
    html_text = '<p>Hi <a href="mailto:bob@example.net">b&#111;b</a> %41</p>'
    assert {"bob@example.net"} <= addresses.address_tokens([html_text])
    # With any of the three, or anything outside ASCII, the full reading runs.
    assert "bob@example.net" in addresses.address_tokens(["bob&#64;example.net"])
    assert "bob@example.net" in addresses.address_tokens(["bob%40example.net"])
    assert "bob@example.net" in addresses.address_tokens(["bob<b></b>@example.net"])
    assert "bob@example.net" in addresses.address_tokens(["bob＠example.net"])
