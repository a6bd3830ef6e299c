"""Security headers on every kind of page: CSP, HSTS, frame options, referrer, nosniff."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from campaigns import services
from campaigns.models import Delivery
from campaigns.tokens import make_unsubscribe_token
from tests.conftest import DEMO_PASSWORD
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def pages(olivia: User, rita: User, make_member: Callable[..., User]) -> dict[str, str]:
    make_member("ann@example.org", first_name="Ann")
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    delivery = Delivery.objects.get(campaign=campaign)
    token = make_unsubscribe_token(
        address="ann@example.org", campaign_id=campaign.pk, issued_at=timezone.now()
    )
    return {
        "login": reverse("admin:login"),
        "admin home": reverse("admin:index"),
        "campaign": reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
        "review": reverse("admin:campaigns_campaign_review", args=[campaign.pk]),
        "preview": reverse(
            "admin:campaigns_campaign_preview_html", args=[campaign.pk, delivery.pk]
        ),
        "unsubscribe": reverse("campaigns:unsubscribe", kwargs={"token": token}),
    }


def fetch(path: str, *, signed_in: bool = True) -> dict[str, str]:
    client = Client()
    if signed_in:
        assert client.login(username="rita", password=DEMO_PASSWORD)
    response = client.get(path, secure=True)
    assert response.status_code == 200, (path, response.status_code)
    return {name.lower(): value for name, value in response.headers.items()}


@pytest.mark.parametrize(
    "page", ["login", "admin home", "campaign", "review", "preview", "unsubscribe"]
)
def test_every_page_sends_the_security_headers(page: str, pages: dict[str, str]) -> None:
    headers = fetch(pages[page], signed_in=page not in ("login", "unsubscribe"))
    csp = headers["content-security-policy"]
    assert "object-src 'none'" in csp or "default-src 'none'" in csp
    assert "script-src 'self'" in csp or "default-src 'none'" in csp
    assert "unsafe-eval" not in csp
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert headers["x-content-type-options"] == "nosniff"
    if page == "preview":
        # Framed by the review page only; sandboxed; no referrer to anything it links.
        assert csp.startswith("sandbox;") and "frame-ancestors 'self'" in csp
        assert headers["x-frame-options"] == "SAMEORIGIN"
        assert headers["referrer-policy"] == "no-referrer"
    else:
        assert "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin"
