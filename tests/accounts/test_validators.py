from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from accounts.validators import single_address_error, validate_single_address


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
