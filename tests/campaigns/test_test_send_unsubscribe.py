"""A test send carries no working unsubscribe link; a real delivery still does."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from django.core import mail
from django.test import Client

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services, worker
from campaigns.models import Suppression
from campaigns.rendering import (
    build_message,
    preview_time,
    recipient_for_test,
    render_eml,
)
from campaigns.tokens import InvalidToken, read_unsubscribe_token
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

ONE_CLICK = "List-Unsubscribe=One-Click"
# Whatever could be a signed value: django.core.signing's "payload:timestamp:signature".
SIGNED = re.compile(r"[A-Za-z0-9_=-]+(?::[A-Za-z0-9_=-]+){2,}")


@pytest.fixture(autouse=True)
def _mail(settings: Any) -> None:
    settings.EMAIL_TRANSPORT = "django.core.mail.backends.locmem.EmailBackend"
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@example.com"
    settings.PUBLIC_BASE_URL = "https://countersign.example.com"
    settings.SEND_RATE_PER_SECOND = 10_000.0
    settings.SEND_BURST = 10_000
    settings.REDIS_URL = ""


def sent(index: int = 0) -> EmailMessage:
    """A message as it was handed to the backend, parsed from its bytes."""
    raw = mail.outbox[index].message().as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def everything_in(message: EmailMessage) -> str:
    """Every header and both decoded parts: wherever a token could hide."""
    # Unfolded: a shorter value may fit where a longer one was folded.
    headers = "\n".join(
        f"{name}: {' '.join(str(value).split())}" for name, value in message.items()
    )
    parts = [
        part.get_content()
        for part in message.walk()
        if part.get_content_type() in ("text/plain", "text/html")
    ]
    return "\n".join([headers, *parts])


def list_unsubscribe(message: EmailMessage) -> tuple[str, str]:
    """(https URL, mailto URL) from the List-Unsubscribe header."""
    links = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    https = [link for link in links if link.startswith("https://")]
    mailto = [link for link in links if link.startswith("mailto:")]
    assert len(https) == 1 and len(mailto) == 1, links
    return https[0], mailto[0]


def test_a_test_send_carries_no_valid_unsubscribe_token(olivia: User) -> None:
    services.send_test(make_campaign(olivia), by=olivia)
    (_,) = mail.outbox
    message = sent()
    assert str(message["Subject"]).startswith("[TEST] ")
    assert message["List-Unsubscribe-Post"] == ONE_CLICK
    url, mailto = list_unsubscribe(message)
    assert urlsplit(url).path == "/u/test/"
    content = everything_in(message)
    assert url in content  # the body's link is the same page
    candidates = re.findall(r"/u/([^/\s<>\"]+)/", content) + SIGNED.findall(content)
    candidates.append(unquote(mailto.partition("subject=")[2]).removeprefix("unsubscribe "))
    assert candidates
    for candidate in candidates:
        with pytest.raises(InvalidToken):
            read_unsubscribe_token(candidate)


def test_posting_a_test_sends_list_unsubscribe_unsubscribes_nobody(olivia: User) -> None:
    services.send_test(make_campaign(olivia), by=olivia)
    url, _ = list_unsubscribe(sent())
    path = urlsplit(url).path
    events = AuditEvent.objects.count()
    # A mail client's one-click POST comes without cookies or a CSRF token.
    client = Client(enforce_csrf_checks=True)
    one_click = client.post(path, data=ONE_CLICK, content_type="application/x-www-form-urlencoded")
    assert one_click.status_code == 200
    assert b"This was a test message" in one_click.content
    assert b"Nothing was unsubscribed" in one_click.content
    page = client.get(path)
    assert page.status_code == 200 and b"Nothing was unsubscribed" in page.content
    assert client.post(path, {"confirm": "1"}).status_code == 200
    assert not Suppression.objects.exists()
    assert AuditEvent.objects.count() == events


def test_a_test_message_is_the_real_one_but_for_the_unsubscribe_link(olivia: User) -> None:
    campaign = make_campaign(olivia)
    recipient = recipient_for_test(campaign, olivia, olivia.email)
    at = preview_time(campaign)
    real = build_message(campaign, recipient, send_time=at)
    test = build_message(campaign, recipient, send_time=at, test=True)
    real_url = real.extra_headers["List-Unsubscribe"].split(">")[0].removeprefix("<")
    token = real_url.rstrip("/").rpartition("/")[2]

    def parsed(raw: bytes) -> EmailMessage:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    expected = everything_in(parsed(render_eml(real)))
    expected = expected.replace(real_url, "https://countersign.example.com/u/test/")
    expected = expected.replace(f"unsubscribe%20{token}", "unsubscribe%20test-message")
    assert everything_in(parsed(render_eml(test))) == expected


def test_a_real_delivery_still_carries_a_working_one_click_link(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    member = make_member("reader@example.org", first_name="Reader")
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    worker.send_batch(campaign.pk, limit=10)
    (_,) = mail.outbox
    message = sent()
    url, _ = list_unsubscribe(message)
    token = urlsplit(url).path.removeprefix("/u/").removesuffix("/")
    assert read_unsubscribe_token(token).address == member.email
    response = Client(enforce_csrf_checks=True).post(
        urlsplit(url).path, data=ONE_CLICK, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200
    assert Suppression.objects.filter(
        address=member.email, reason=Suppression.Reason.UNSUBSCRIBED
    ).exists()
