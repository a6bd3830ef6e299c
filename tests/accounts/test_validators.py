from __future__ import annotations

import unicodedata

import pytest
from django.core.exceptions import ValidationError

from accounts.validators import (
    FORMAT_CHARACTERS,
    body_text_error,
    person_text_error,
    single_address_error,
    validate_single_address,
)


@pytest.mark.parametrize(
    "value",
    ["alice@example.com", "o'brien@example.org", "zoe@exämple.net", "a+tag@sub.example.com"],
)
def test_single_bare_address_is_accepted(value: str) -> None:
    assert single_address_error(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a@x.com, b@y.com", "contains"),
        ("a@x.com;b@y.com", "contains"),
        ('"a,b"@x.com', "quoted"),
        ('"Smith, John" <john@x.com>', "quoted"),
        ("John <john@x.com>", "contains"),
        ("john@x.com\r\nBcc: eve@evil.example", "control"),
        ("john@x.com\x00", "control"),
        ("a@b@c.com", "exactly one @"),
        ("", "empty"),
        (" a@x.com", "spaces"),
        ("undisclosed-recipients:;", "contains"),
        ("group: a@x.com;", "contains"),
        ("no-at-sign", "exactly one @"),
        ("zoë@example.net", "not a valid"),
        ("a@", "not"),
    ],
)
def test_anything_but_one_bare_address_is_refused(value: str, reason: str) -> None:
    error = single_address_error(value)
    assert error is not None and reason in error
    with pytest.raises(ValidationError):
        validate_single_address(value)


@pytest.mark.parametrize(
    ("value", "position", "fragment"),
    [
        ("Zoe\u202e.cba", 3, "right-to-left override"),
        ("Zo\u200be", 2, "zero width space"),
        ("Bob\r\nBcc: eve@example.org", 3, "carriage return"),
        ("\ufeffAnn", 0, "zero width no-break space"),
    ],
)
def test_person_text_refuses_controls_and_invisible_characters(
    value: str, position: int, fragment: str
) -> None:
    found = person_text_error(value)
    assert found is not None
    assert found[0] == position and fragment in found[1]


def test_person_text_accepts_ordinary_names_in_any_script() -> None:
    for name in ("Zoë Müller", "O'Brien-Smith", "Ёлка", "山田 太郎", "Nguyễn"):
        assert person_text_error(name) is None


def test_body_text_allows_line_breaks_and_emoji_joiners_but_not_bidi_overrides() -> None:
    assert body_text_error("Hello,\n\tthe team 👩\u200d💻\r\n") is None
    assert body_text_error("pay \u202eevil") == (
        4,
        "contains the invisible character U+202E (right-to-left override)",
    )
    assert body_text_error("a\x00b") == (1, "contains the control character U+0000 (NUL)")


def test_the_format_character_list_is_unicode_category_cf() -> None:
    every_cf = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    matched = {chr(c) for c in range(0x110000) if FORMAT_CHARACTERS.fullmatch(chr(c))}
    assert matched == every_cf


def test_a_joiner_inside_an_emoji_sequence_is_fine_anywhere_else_it_is_not() -> None:
    assert person_text_error("Ada 👩\u200d💻") is None
    assert person_text_error("Ada 👍🏽\u200d💻") is None
    assert person_text_error("zoe\u200d@example.net") == (
        3,
        "contains the invisible character U+200D (zero width joiner)",
    )


def _generated_addresses(count: int) -> list[str]:
    """Addresses from every character the plain form allows, one in four with an intruder."""
    import random

    rng = random.Random(20261202)
    atom_chars = "abcXYZ019!#$%&'*+/^_{|}~-"
    label_chars = "abz09-"
    intruders = '=?`"(),:;<>@[]\\ .é\u00a0\t'

    def word(chars: str) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(1, 6)))

    values = []
    for _ in range(count):
        local = ".".join(word(atom_chars) for _ in range(rng.randint(1, 3)))
        domain = ".".join(word(label_chars) for _ in range(rng.randint(1, 4)))
        value = f"{local}@{domain}"
        if rng.random() < 0.25:
            at = rng.randrange(len(value) + 1)
            value = value[:at] + rng.choice(intruders) + value[at:]
        values.append(value)
    return values


def test_the_plain_form_shortcut_agrees_with_both_parsers() -> None:
    # single_address_error skips the standard-library parsers for plain addr-specs: for
    # every value the shortcut takes, both must read exactly that value, or the shortcut
    # would let through what a parser reads differently.
    from email.utils import getaddresses

    from accounts.validators import _PLAIN_ADDRESS, _policy_addresses

    taken = 0
    for value in _generated_addresses(20_000):
        if _PLAIN_ADDRESS.fullmatch(value):
            taken += 1
            assert getaddresses([value]) == [("", value)], value
            assert _policy_addresses(value) == [value], value
    assert taken > 1_000  # the generator really exercises the shortcut
