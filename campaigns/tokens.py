"""Signed unsubscribe tokens: who asked to leave, from which campaign.

A token is `django.core.signing.dumps` of the address and campaign id under a salt of its
own, so no other signed value of the project (sessions, password resets) can stand in for
one, and it carries its signing time: `loads(max_age=...)` refuses old links.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, get_urlconf, reverse

from accounts.validators import single_address_error

UNSUBSCRIBE_SALT = "countersign.unsubscribe"
# Long enough for a newsletter found in the archive months later; short enough that a
# leaked link does not work forever.
UNSUBSCRIBE_MAX_AGE = timedelta(days=180)


class InvalidToken(ValueError):
    """Forged, altered, expired or malformed unsubscribe token."""


@dataclass(frozen=True)
class UnsubscribeRequest:
    address: str
    campaign_id: int | None


class _SignedAt(signing.TimestampSigner):
    """A TimestampSigner whose clock is a given instant instead of `time.time()`."""

    def __init__(self, *, issued_at: datetime, salt: str) -> None:
        super().__init__(salt=salt)
        self._issued_at = int(issued_at.timestamp())

    def timestamp(self) -> str:
        return signing.b62_encode(self._issued_at)


def make_unsubscribe_token(
    *, address: str, campaign_id: int | None, issued_at: datetime | None = None
) -> str:
    """Sign (address, campaign id); `read_unsubscribe_token` accepts it for 180 days.

    `issued_at` pins the signing time (the message builder passes a time fixed per
    campaign, so every build of a message carries the same link); by default, now.
    The result is exactly what `signing.dumps` would produce at that instant.
    """
    # Short keys keep the URL (and the List-Unsubscribe header) short.
    payload = {"a": address, "c": campaign_id}
    if issued_at is None:
        return signing.dumps(payload, salt=UNSUBSCRIBE_SALT)
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    return _SignedAt(issued_at=issued_at, salt=UNSUBSCRIBE_SALT).sign_object(payload)


def read_unsubscribe_token(
    token: str, *, max_age: timedelta = UNSUBSCRIBE_MAX_AGE
) -> UnsubscribeRequest:
    try:
        payload = signing.loads(token, salt=UNSUBSCRIBE_SALT, max_age=max_age)
    except signing.SignatureExpired as error:
        raise InvalidToken("This unsubscribe link has expired.") from error
    except (signing.BadSignature, ValueError) as error:
        raise InvalidToken("This unsubscribe link is not valid.") from error
    if not isinstance(payload, dict):
        raise InvalidToken("This unsubscribe link is not valid.")
    address = payload.get("a")
    campaign_id = payload.get("c")
    # Signed by us, so malformed content means a bug or a key compromise: refuse either way.
    if not isinstance(address, str) or single_address_error(address) is not None:
        raise InvalidToken("This unsubscribe link is not valid.")
    if campaign_id is not None and (type(campaign_id) is not int or campaign_id <= 0):
        raise InvalidToken("This unsubscribe link is not valid.")
    return UnsubscribeRequest(address=address, campaign_id=campaign_id)


# What `signing` puts in a token: URL-safe base64 and base62 parts joined by ":", none of
# which `reverse` escapes, so the URL is a fixed prefix and suffix around the token.
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_:-]+")
_MARK = "TOKEN"


@lru_cache(maxsize=8)
def _unsubscribe_path_around(urlconf: str | None, script_prefix: str) -> tuple[str, str]:
    path = reverse("campaigns:unsubscribe", kwargs={"token": _MARK}, urlconf=urlconf)
    # The token is the path's last segment: a script prefix may hold the mark too.
    prefix, mark, suffix = path.rpartition(_MARK)
    assert mark, path
    return prefix, suffix


def unsubscribe_url(token: str) -> str:
    """The absolute one-click URL for a token (the same URL goes into List-Unsubscribe).

    The builder asks once per message: `reverse` runs once per URLconf and script prefix,
    and a token of signing's characters is put between the path's two halves.
    """
    if not _TOKEN_CHARACTERS.fullmatch(token):
        path = reverse("campaigns:unsubscribe", kwargs={"token": token})
        return f"{settings.PUBLIC_BASE_URL}{path}"
    prefix, suffix = _unsubscribe_path_around(
        get_urlconf() or settings.ROOT_URLCONF, get_script_prefix()
    )
    return f"{settings.PUBLIC_BASE_URL}{prefix}{token}{suffix}"


def test_unsubscribe_url() -> str:
    """Where a test send's unsubscribe link leads: a page that says it was a test and
    unsubscribes nobody, for a GET or a one-click POST alike. It carries no token."""
    return f"{settings.PUBLIC_BASE_URL}{reverse('campaigns:unsubscribe_test')}"
