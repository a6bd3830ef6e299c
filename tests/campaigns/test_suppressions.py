"""Suppression services and the suppression admin (add manual, remove with a reason, roles)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import path, reverse

from accounts.models import User
from audit.models import AuditEvent
from campaigns.admin_suppressions import SuppressionAdmin
from campaigns.models import Campaign, Suppression
from campaigns.suppressions import (
    RemovalReasonRequired,
    add_suppression,
    is_suppressed,
    remove_suppression,
    suppressed_addresses,
)

# The project's admin.py registers SuppressionAdmin on admin.site; these tests mount it on
# a site of their own (same "admin" namespace) so they do not depend on that wiring.
site = admin.AdminSite(name="admin")
site.register(Suppression, SuppressionAdmin)
urlpatterns = [path("admin/", site.urls)]

pytestmark = pytest.mark.django_db

ANNOUNCEMENT = Campaign.Category.ANNOUNCEMENT
SERVICE_NOTICE = Campaign.Category.SERVICE_NOTICE


def audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


# --- services --------------------------------------------------------------------------------


def test_add_stores_lower_case_and_audits() -> None:
    created = add_suppression(" Person@Example.ORG ", "hard_bounce", source="Postmark webhook")
    assert created is not None
    assert created.address == "person@example.org"
    [event] = audit("suppression.added")
    assert event.object_id == str(created.pk)
    assert event.data["address"] == "person@example.org"
    assert event.data["reason"] == "hard_bounce"
    assert event.data["source"] == "Postmark webhook"


def test_add_is_idempotent() -> None:
    first = add_suppression("person@example.org", "complaint", source="webhook")
    again = add_suppression("PERSON@example.org", "complaint", source="webhook")
    assert first is not None and again is None
    assert Suppression.objects.count() == 1
    assert len(audit("suppression.added")) == 1


def test_a_stronger_reason_upgrades_an_unsubscribe(root: User) -> None:
    add_suppression("person@example.org", "unsubscribed", source="one-click, campaign 3")
    upgraded = add_suppression("person@example.org", "manual", source="admin", by=root)
    assert upgraded is not None
    row = Suppression.objects.get()
    assert (row.reason, row.source, row.created_by) == ("manual", "admin", root)
    [event] = audit("suppression.upgraded")
    assert event.data["previous"]["reason"] == "unsubscribed"
    assert event.data["reason"] == "manual"
    assert event.actor_id == root.pk
    assert is_suppressed("person@example.org", SERVICE_NOTICE)


def test_a_weaker_or_equal_reason_never_replaces_a_strong_one() -> None:
    add_suppression("person@example.org", "complaint", source="webhook")
    assert add_suppression("person@example.org", "unsubscribed", source="one-click") is None
    assert add_suppression("person@example.org", "hard_bounce", source="webhook") is None
    assert Suppression.objects.get().reason == "complaint"
    assert audit("suppression.upgraded") == []


def test_unusable_address_is_not_stored() -> None:
    assert add_suppression("a@x.example, b@y.example", "complaint", source="webhook") is None
    assert add_suppression("", "complaint", source="webhook") is None
    assert Suppression.objects.count() == 0


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        add_suppression("person@example.org", "angry", source="test")


def test_unsubscribe_applies_to_announcements_only() -> None:
    add_suppression("reader@example.org", "unsubscribed", source="one-click")
    assert is_suppressed("Reader@Example.org", ANNOUNCEMENT)
    assert not is_suppressed("reader@example.org", SERVICE_NOTICE)
    assert "reader@example.org" in suppressed_addresses(ANNOUNCEMENT)
    assert "reader@example.org" not in suppressed_addresses(SERVICE_NOTICE)


@pytest.mark.parametrize("reason", ["hard_bounce", "complaint", "manual"])
def test_strong_reasons_apply_to_every_category(reason: str) -> None:
    add_suppression("person@example.org", reason, source="test")
    assert is_suppressed("person@example.org", ANNOUNCEMENT)
    assert is_suppressed("person@example.org", SERVICE_NOTICE)
    assert suppressed_addresses(ANNOUNCEMENT) == {"person@example.org"}
    assert suppressed_addresses(SERVICE_NOTICE) == {"person@example.org"}


def test_suppressed_addresses_agrees_with_applies_to() -> None:
    for number, reason in enumerate(Suppression.Reason.values):
        add_suppression(f"p{number}@example.org", reason, source="test")
    for category in Campaign.Category.values:
        expected = {s.address for s in Suppression.objects.all() if s.applies_to(category)}
        assert suppressed_addresses(category) == expected


def test_remove_needs_a_reason(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    with pytest.raises(RemovalReasonRequired):
        remove_suppression(suppression, by=root, reason="   ")
    assert Suppression.objects.count() == 1
    assert audit("suppression.removed") == []


def test_remove_is_audited_with_the_removed_row(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="Postmark webhook")
    assert suppression is not None
    remove_suppression(suppression, by=root, reason="Complaint was a mistake, ticket 981")
    assert Suppression.objects.count() == 0
    [event] = audit("suppression.removed")
    assert event.object_id == str(suppression.pk)
    assert event.actor_id == root.pk
    assert event.data["address"] == "person@example.org"
    assert event.data["reason"] == "complaint"
    assert event.data["source"] == "Postmark webhook"
    assert event.data["removal_reason"] == "Complaint was a mistake, ticket 981"


# --- admin ----------------------------------------------------------------------------------

admin_urls = pytest.mark.urls(__name__)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@admin_urls
def test_admin_lists_and_searches_suppressions(root: User) -> None:
    add_suppression("findme@example.org", "hard_bounce", source="Postmark webhook")
    add_suppression("other@example.org", "unsubscribed", source="one-click")
    response = logged_in(root).get(
        reverse("admin:campaigns_suppression_changelist"), {"q": "findme"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "findme@example.org" in body
    assert "other@example.org" not in body

    filtered = logged_in(root).get(
        reverse("admin:campaigns_suppression_changelist"), {"reason__exact": "unsubscribed"}
    )
    assert "other@example.org" in filtered.content.decode()
    assert "findme@example.org" not in filtered.content.decode()


@admin_urls
def test_admin_adds_a_manual_suppression_and_audits_it(root: User) -> None:
    response = logged_in(root).post(
        reverse("admin:campaigns_suppression_add"),
        {"address": "Manual@Example.org", "note": "ticket 77"},
    )
    assert response.status_code == 302
    row = Suppression.objects.get()
    assert row.address == "manual@example.org"
    assert row.reason == Suppression.Reason.MANUAL
    assert row.created_by == root
    assert row.source == "admin: ticket 77"
    [event] = audit("suppression.added")
    assert event.actor_id == root.pk
    assert event.data["reason"] == "manual"


@admin_urls
def test_admin_add_ignores_a_posted_reason(root: User) -> None:
    logged_in(root).post(
        reverse("admin:campaigns_suppression_add"),
        {"address": "manual@example.org", "reason": "unsubscribed"},
    )
    assert Suppression.objects.get().reason == Suppression.Reason.MANUAL


@admin_urls
@pytest.mark.parametrize("address", ["a@x.example, b@y.example", "Name <a@x.example>", "nope"])
def test_admin_add_refuses_anything_but_one_bare_address(root: User, address: str) -> None:
    response = logged_in(root).post(
        reverse("admin:campaigns_suppression_add"), {"address": address}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["address"]
    assert Suppression.objects.count() == 0


@admin_urls
def test_admin_add_upgrades_an_unsubscribe_but_refuses_a_duplicate(root: User) -> None:
    add_suppression("person@example.org", "unsubscribed", source="one-click")
    client = logged_in(root)
    response = client.post(
        reverse("admin:campaigns_suppression_add"), {"address": "Person@example.org"}
    )
    assert response.status_code == 302
    assert Suppression.objects.get().reason == Suppression.Reason.MANUAL

    again = client.post(
        reverse("admin:campaigns_suppression_add"), {"address": "person@example.org"}
    )
    assert again.status_code == 200
    assert "already suppressed" in again.content.decode()
    assert Suppression.objects.count() == 1


@admin_urls
def test_admin_remove_asks_for_a_reason_then_removes_and_audits(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    client = logged_in(root)
    url = reverse("admin:campaigns_suppression_remove", args=[suppression.pk])

    page = client.get(url)
    assert page.status_code == 200
    assert 'name="reason"' in page.content.decode()
    assert Suppression.objects.count() == 1

    refused = client.post(url, {"reason": "  "})
    assert refused.status_code == 400
    assert Suppression.objects.count() == 1
    assert audit("suppression.removed") == []

    done = client.post(url, {"reason": "Verified with the member by phone"})
    assert done.status_code == 302
    assert Suppression.objects.count() == 0
    [event] = audit("suppression.removed")
    assert event.actor_id == root.pk
    assert event.data["removal_reason"] == "Verified with the member by phone"
    assert event.data["address"] == "person@example.org"


@admin_urls
def test_admin_remove_needs_csrf(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)
    url = reverse("admin:campaigns_suppression_remove", args=[suppression.pk])
    assert client.post(url, {"reason": "no token"}).status_code == 403
    assert Suppression.objects.count() == 1


@admin_urls
def test_admin_delete_view_and_action_are_not_available(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    client = logged_in(root)
    delete_url = reverse("admin:campaigns_suppression_delete", args=[suppression.pk])
    assert client.get(delete_url).status_code == 403
    assert client.post(delete_url, {"post": "yes"}).status_code == 403

    changelist = reverse("admin:campaigns_suppression_changelist")
    response = client.post(
        changelist,
        {"action": "delete_selected", "_selected_action": [suppression.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert "delete_selected" not in client.get(changelist).content.decode()
    assert Suppression.objects.count() == 1


@admin_urls
def test_admin_rows_cannot_be_edited(root: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    url = reverse("admin:campaigns_suppression_change", args=[suppression.pk])
    client = logged_in(root)
    page = client.get(url)
    assert page.status_code == 200  # a read-only view, with a link to the removal form
    assert (
        reverse("admin:campaigns_suppression_remove", args=[suppression.pk])
        in page.content.decode()
    )
    response = client.post(url, {"address": "changed@example.org"})
    assert response.status_code == 403
    assert Suppression.objects.get().address == "person@example.org"


@admin_urls
def test_compliance_can_view_but_not_add_or_remove(rita: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    client = logged_in(rita)
    listing = client.get(reverse("admin:campaigns_suppression_changelist"))
    assert listing.status_code == 200
    assert "person@example.org" in listing.content.decode()
    remove_url = reverse("admin:campaigns_suppression_remove", args=[suppression.pk])
    assert remove_url not in listing.content.decode()

    add = client.post(reverse("admin:campaigns_suppression_add"), {"address": "x@example.org"})
    assert add.status_code == 403
    assert client.post(remove_url, {"reason": "because"}).status_code == 403
    assert Suppression.objects.count() == 1


@admin_urls
def test_ops_and_roleless_staff_see_nothing(olivia: User, mallory: User) -> None:
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    for user in (olivia, mallory):
        client = logged_in(user)
        assert client.get(reverse("admin:campaigns_suppression_changelist")).status_code == 403
        remove_url = reverse("admin:campaigns_suppression_remove", args=[suppression.pk])
        assert client.post(remove_url, {"reason": "because"}).status_code == 403
    assert Suppression.objects.count() == 1


@admin_urls
def test_superuser_status_alone_grants_nothing(db: None) -> None:
    bare_superuser = User.objects.create_user(
        username="su", email="su@example.com", password="x", is_staff=True, is_superuser=True
    )
    suppression = add_suppression("person@example.org", "complaint", source="webhook")
    assert suppression is not None
    client = logged_in(bare_superuser)
    assert client.get(reverse("admin:campaigns_suppression_changelist")).status_code == 403
    add = client.post(reverse("admin:campaigns_suppression_add"), {"address": "x@example.org"})
    assert add.status_code == 403
    remove_url = reverse("admin:campaigns_suppression_remove", args=[suppression.pk])
    assert client.post(remove_url, {"reason": "because"}).status_code == 403
    assert Suppression.objects.count() == 1
