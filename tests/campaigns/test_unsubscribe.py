"""Public unsubscribe: GET confirms, RFC 8058 one-click POST acts, forged tokens change nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from campaigns.models import Campaign, Suppression
from campaigns.suppressions import add_suppression, is_suppressed
from campaigns.tokens import make_unsubscribe_token

pytestmark = pytest.mark.django_db

ADDRESS = "Reader@Example.org"
ONE_CLICK = "List-Unsubscribe=One-Click"


def url_for(token: str) -> str:
    return reverse("campaigns:unsubscribe", kwargs={"token": token})


@pytest.fixture
def token() -> str:
    return make_unsubscribe_token(address=ADDRESS, campaign_id=7)


@pytest.fixture
def csrf_client() -> Client:
    # Mail clients and scanners never send a CSRF token; this client enforces the check.
    return Client(enforce_csrf_checks=True)


def one_click(client: Client, token: str) -> Any:
    return client.post(
        url_for(token), data=ONE_CLICK, content_type="application/x-www-form-urlencoded"
    )


def test_get_shows_a_confirmation_form_and_changes_nothing(csrf_client: Client, token: str) -> None:
    response = csrf_client.get(url_for(token))
    assert response.status_code == 200
    body = response.content.decode()
    assert '<form method="post"' in body
    assert f'action="{url_for(token)}"' in body
    assert "csrfmiddlewaretoken" in body
    assert ADDRESS in body
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    assert Suppression.objects.count() == 0
    assert not AuditEvent.objects.filter(action__startswith="suppression.").exists()


def test_page_loads_no_external_assets(csrf_client: Client, token: str) -> None:
    body = csrf_client.get(url_for(token)).content.decode()
    assert "<script" not in body
    assert "<link" not in body
    assert "http://" not in body and "https://" not in body


def test_one_click_post_unsubscribes_without_csrf_token(csrf_client: Client, token: str) -> None:
    response = one_click(csrf_client, token)
    assert response.status_code == 200
    assert "unsubscribed" in response.content.decode().lower()

    suppression = Suppression.objects.get()
    assert suppression.address == "reader@example.org"
    assert suppression.reason == Suppression.Reason.UNSUBSCRIBED
    assert suppression.source == "one-click, campaign 7"
    audit = AuditEvent.objects.get(action="suppression.added")
    assert audit.object_id == str(suppression.pk)
    assert audit.data["reason"] == "unsubscribed"


def test_one_click_as_multipart_form_also_works(csrf_client: Client, token: str) -> None:
    # RFC 8058 allows multipart/form-data as well; the test client posts dicts that way.
    response = csrf_client.post(url_for(token), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert Suppression.objects.filter(address="reader@example.org").exists()


def test_one_click_is_idempotent(csrf_client: Client, token: str) -> None:
    one_click(csrf_client, token)
    audit_count = AuditEvent.objects.count()
    response = one_click(csrf_client, token)
    assert response.status_code == 200
    assert Suppression.objects.count() == 1
    assert AuditEvent.objects.count() == audit_count


def test_confirmation_form_post_without_csrf_token_is_refused(
    csrf_client: Client, token: str
) -> None:
    response = csrf_client.post(url_for(token), data={})
    assert response.status_code == 403
    assert Suppression.objects.count() == 0


def test_other_body_without_csrf_token_is_refused(csrf_client: Client, token: str) -> None:
    response = csrf_client.post(url_for(token), data={"List-Unsubscribe": "Yes-Please"})
    assert response.status_code == 403
    assert Suppression.objects.count() == 0


def test_confirmation_form_post_with_csrf_token_unsubscribes(
    csrf_client: Client, token: str
) -> None:
    page = csrf_client.get(url_for(token))
    csrf_token = page.context["csrf_token"]
    response = csrf_client.post(url_for(token), data={"csrfmiddlewaretoken": str(csrf_token)})
    assert response.status_code == 200
    suppression = Suppression.objects.get()
    assert suppression.reason == Suppression.Reason.UNSUBSCRIBED
    assert suppression.source == "confirmation page, campaign 7"


@pytest.mark.parametrize("method", ["get", "post"])
def test_tampered_token_is_refused_and_changes_nothing(
    csrf_client: Client, token: str, method: str
) -> None:
    # Swap one character of the signed payload.
    position = 3
    tampered = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
    if method == "get":
        response = csrf_client.get(url_for(tampered))
    else:
        response = csrf_client.post(
            url_for(tampered), data=ONE_CLICK, content_type="application/x-www-form-urlencoded"
        )
    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert Suppression.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_token_for_another_address_cannot_be_forged(csrf_client: Client) -> None:
    from django.core import signing

    forged = signing.dumps({"a": "victim@example.org", "c": 7}, salt="some-other-salt")
    response = one_click(csrf_client, forged)
    assert response.status_code == 400
    assert Suppression.objects.count() == 0


def test_expired_token_is_refused(csrf_client: Client) -> None:
    old = make_unsubscribe_token(
        address=ADDRESS, campaign_id=7, issued_at=timezone.now() - timedelta(days=181)
    )
    response = one_click(csrf_client, old)
    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert Suppression.objects.count() == 0


def test_other_methods_are_not_allowed(csrf_client: Client, token: str) -> None:
    assert csrf_client.put(url_for(token)).status_code == 405
    assert Suppression.objects.count() == 0


def test_unsubscribe_silences_announcements_but_not_service_notices(
    csrf_client: Client, token: str
) -> None:
    one_click(csrf_client, token)
    assert is_suppressed("reader@example.org", Campaign.Category.ANNOUNCEMENT)
    assert is_suppressed(ADDRESS, Campaign.Category.ANNOUNCEMENT)
    assert not is_suppressed("reader@example.org", Campaign.Category.SERVICE_NOTICE)


def test_unsubscribe_never_weakens_a_complaint(csrf_client: Client, token: str) -> None:
    add_suppression(ADDRESS, Suppression.Reason.COMPLAINT, source="Postmark webhook")
    response = one_click(csrf_client, token)
    assert response.status_code == 200
    assert Suppression.objects.get().reason == Suppression.Reason.COMPLAINT
    assert is_suppressed(ADDRESS, Campaign.Category.SERVICE_NOTICE)


def test_token_without_campaign_records_plain_source(csrf_client: Client) -> None:
    token = make_unsubscribe_token(address=ADDRESS, campaign_id=None)
    one_click(csrf_client, token)
    assert Suppression.objects.get().source == "one-click"
