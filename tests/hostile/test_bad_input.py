"""Weakness 8: bad input answered with HTTP 500.

The preview of a recipient whose message cannot be built (a name that may not go in a
header), and a webhook with the right secret and a malformed body, each crashed with a
traceback. Both are clear 4xx answers now, and nothing changes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services
from campaigns.models import Campaign, Delivery, ProviderEvent
from tests.conftest import DEMO_PASSWORD
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

SECRET = "postmark-hook:s3cret-Value"


@pytest.fixture
def unbuildable(olivia: User, make_member: Callable[..., User]) -> Delivery:
    """A submitted campaign whose subject greets a member by a name with a line break."""
    make_member("ann@example.org", first_name="Ann")
    campaign = make_campaign(olivia, subject_template="News for {{ first_name }}")
    campaign = services.submit_for_review(campaign, by=olivia)
    delivery = Delivery.objects.get(campaign=campaign)
    # The name changed after it was frozen the way an old import could have stored it.
    Delivery.objects.filter(pk=delivery.pk).update(
        recipient_data={**delivery.recipient_data, "first_name": "Ann\r\nBcc: eve@example.org"}
    )
    return delivery


@pytest.mark.parametrize("part", ["preview_eml", "preview_html"])
def test_the_preview_of_an_unbuildable_message_says_why_with_a_4xx(
    part: str, unbuildable: Delivery, rita: User
) -> None:
    client = Client()
    assert client.login(username="rita", password=DEMO_PASSWORD)
    url = reverse(
        f"admin:campaigns_campaign_{part}", args=[unbuildable.campaign_id, unbuildable.pk]
    )
    response = client.get(url)
    assert response.status_code == 422
    body = response.content.decode()
    assert "ann@example.org cannot be built" in body and "control character" in body
    assert "Traceback" not in body
    assert Campaign.objects.get(pk=unbuildable.campaign_id).status == Campaign.Status.IN_REVIEW


def test_the_review_page_shows_the_unbuildable_recipient_instead_of_failing(
    unbuildable: Delivery, rita: User
) -> None:
    client = Client()
    assert client.login(username="rita", password=DEMO_PASSWORD)
    response = client.get(
        reverse("admin:campaigns_campaign_review", args=[unbuildable.campaign_id])
    )
    assert response.status_code == 200
    assert b"This recipient would fail" in response.content


@pytest.fixture
def webhook_secret() -> Iterator[None]:
    with override_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET, "POSTMARK_SERVER_TOKEN": "t"}):
        yield


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe", b"[]", b'"a string"', b""],
    ids=["broken-json", "not-utf8", "a-list", "a-string", "empty"],
)
def test_a_malformed_webhook_with_the_right_secret_is_refused_with_400(
    body: bytes, webhook_secret: None
) -> None:
    token = base64.b64encode(SECRET.encode()).decode()
    events_before = AuditEvent.objects.count()
    response = Client(raise_request_exception=False).post(
        "/anymail/postmark/tracking/",
        data=body,
        content_type="application/json",
        headers={"Authorization": f"Basic {token}"},
    )
    assert response.status_code == 400
    assert b"Traceback" not in response.content
    assert not ProviderEvent.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_the_secret_is_still_checked_before_the_body_is_read(webhook_secret: None) -> None:
    token = base64.b64encode(b"postmark-hook:wrong").decode()
    response = Client(raise_request_exception=False).post(
        "/anymail/postmark/tracking/",
        data=b"{not json",
        content_type="application/json",
        headers={"Authorization": f"Basic {token}"},
    )
    assert response.status_code == 400
    assert not ProviderEvent.objects.exists()
