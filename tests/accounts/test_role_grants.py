"""Compliance and superuser are granted by a second person: request, confirm, refuse."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import RoleGrant, User
from audit.models import AuditEvent
from tests.accounts.admin_client import change_user, page_messages, sign_in, signed_in
from tests.conftest import DEMO_PASSWORD, make_staff

pytestmark = pytest.mark.django_db


def test_ticking_compliance_on_someone_else_asks_for_a_grant_and_adds_other_roles(
    root: User,
) -> None:
    carl = make_staff("carl")
    response = change_user(signed_in(root), carl, groups=["Ops", "Compliance"])

    assert any("waiting" in message for message in page_messages(response))
    assert set(carl.groups.values_list("name", flat=True)) == {"Ops"}
    grant = RoleGrant.objects.get(user=carl)
    assert (grant.kind, grant.outcome, grant.requested_by) == ("compliance", "pending", root)
    event = AuditEvent.objects.get(action="user.grant_requested")
    assert (event.actor_id, event.object_id, event.data["kind"]) == (
        root.pk,
        str(carl.pk),
        "compliance",
    )


def test_asking_twice_keeps_one_pending_grant(root: User) -> None:
    carl = make_staff("carl")
    first = services.request_grant(carl, RoleGrant.Kind.SUPERUSER, by=root)
    again = services.request_grant(carl, RoleGrant.Kind.SUPERUSER, by=root)
    assert first.pk == again.pk
    assert AuditEvent.objects.filter(action="user.grant_requested").count() == 1


def test_nobody_asks_for_a_role_for_themselves(root: User) -> None:
    with pytest.raises(services.AccountRefused, match="for yourself"):
        services.request_grant(root, RoleGrant.Kind.COMPLIANCE, by=root)
    assert not RoleGrant.objects.exists()


def test_a_third_compliance_member_confirms_and_the_owner_gets_a_link(
    root: User, rita: User, django_capture_on_commit_callbacks: Any
) -> None:
    carl = make_staff("carl", first_name="Carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=root)

    with django_capture_on_commit_callbacks(execute=True):
        services.decide_grant(grant, by=rita, confirm=True)

    grant.refresh_from_db()
    carl.refresh_from_db()
    assert (grant.outcome, grant.decided_by) == ("confirmed", rita)
    assert carl.groups.filter(name="Compliance").exists()
    # root chose carl's password (make_staff stands for the admin's add form here).
    assert not carl.has_usable_password()
    assert sign_in("carl", DEMO_PASSWORD) is None
    [message] = mail.outbox
    parsed = email.message_from_bytes(message.message().as_bytes(), policy=email.policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["carl@example.com"]
    body = parsed.get_content()
    assert "Compliance role was confirmed for your account" in body and "sign-in name: carl" in body
    actions = list(
        AuditEvent.objects.filter(object_id=str(carl.pk)).values_list("action", "actor_id")
    )
    assert actions[-3:] == [
        ("user.grant_confirmed", rita.pk),
        ("user.password_disabled", rita.pk),
        ("user.password_link_sent", rita.pk),
    ]


def test_the_link_sets_a_password_known_to_the_owner_only(
    root: User, rita: User, django_capture_on_commit_callbacks: Any
) -> None:
    carl = make_staff("carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=root)
    with django_capture_on_commit_callbacks(execute=True):
        services.decide_grant(grant, by=rita, confirm=True)
    link = re.search(r"https?://\S+", str(mail.outbox[0].body))
    assert link is not None
    path = link.group().removeprefix("http://127.0.0.1:8000")

    client = Client()
    form_page = client.get(path, follow=True)
    assert form_page.context["validlink"]
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "Carls-own-choice-77", "new_password2": "Carls-own-choice-77"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("admin:login")
    carl.refresh_from_db()
    assert carl.password_owner_only and carl.password_set_by == carl
    assert sign_in("carl", "Carls-own-choice-77") is not None
    event = AuditEvent.objects.filter(action="user.password_changed").get()
    assert (event.actor_id, event.data["via"]) == (carl.pk, "link")
    assert "Carls-own-choice-77" not in str(event.data) and carl.password not in str(event.data)
    # The link worked once.
    assert not client.get(path, follow=True).context["validlink"]


def test_confirming_keeps_a_password_only_the_owner_knows(root: User, rita: User) -> None:
    carl = make_staff("carl")
    carl.attribute_password(carl, owner_only=True)
    carl.save()
    grant = services.request_grant(carl, RoleGrant.Kind.SUPERUSER, by=root)
    services.decide_grant(grant, by=rita, confirm=True)
    carl.refresh_from_db()
    assert carl.is_superuser and carl.has_usable_password()
    assert not AuditEvent.objects.filter(action="user.password_disabled").exists()


def test_a_refusal_gives_nothing_and_records_why(root: User, rita: User) -> None:
    carl = make_staff("carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=root)
    services.decide_grant(grant, by=rita, confirm=False, note="Not on the compliance team")
    grant.refresh_from_db()
    assert (grant.outcome, grant.note) == ("refused", "Not on the compliance team")
    assert not carl.groups.exists() and carl.has_usable_password()
    assert AuditEvent.objects.get(action="user.grant_refused").data["note"] == (
        "Not on the compliance team"
    )
    with pytest.raises(services.AccountRefused, match="already refused"):
        services.decide_grant(grant, by=rita, confirm=True)


@pytest.mark.parametrize("decider", ["grantee", "requester", "ops", "admin"])
def test_only_a_third_compliance_member_decides(decider: str, rita: User) -> None:
    ruth = make_staff("ruth", "Compliance", "Admin")
    carl = make_staff("carl", "Compliance")  # already Compliance, asking for superuser
    grant = services.request_grant(carl, RoleGrant.Kind.SUPERUSER, by=ruth)
    person = {
        "grantee": carl,
        "requester": ruth,
        "ops": make_staff("opal", "Ops"),
        "admin": make_staff("ada", "Admin"),
    }[decider]
    with pytest.raises(services.AccountRefused):
        services.decide_grant(grant, by=person, confirm=True)
    grant.refresh_from_db()
    carl.refresh_from_db()
    assert grant.outcome == "pending" and not carl.is_superuser


def test_grant_page_offers_the_decision_only_to_a_third_compliance_member(
    root: User, rita: User
) -> None:
    carl = make_staff("carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=root)
    url = reverse("admin:accounts_rolegrant_change", args=[grant.pk])

    page = signed_in(rita).get(url).content.decode()
    assert 'id="decide-form"' in page and "carl@example.com" in page
    assert "a link to choose one goes to carl@example.com" in page
    page = signed_in(root).get(url).content.decode()
    assert 'id="decide-form"' not in page
    assert "Only a Compliance member can confirm or refuse a grant." in page
    assert signed_in(make_staff("opal", "Ops")).get(url).status_code == 403
    listing = signed_in(rita).get(reverse("admin:accounts_rolegrant_changelist"))
    assert listing.status_code == 200 and "carl" in listing.content.decode()


def test_deciding_needs_post_and_csrf(root: User, rita: User) -> None:
    carl = make_staff("carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=root)
    url = reverse("admin:accounts_rolegrant_decide", args=[grant.pk])
    assert signed_in(rita).get(url).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(rita)
    assert strict.post(url, {"confirm": "1"}).status_code == 403
    grant.refresh_from_db()
    assert grant.outcome == "pending"
    response = signed_in(rita).post(url, {"confirm": "1"}, follow=True)
    assert any("confirmed" in message for message in page_messages(response))


def test_grant_pages_answer_404_for_ids_that_are_not_grants(rita: User) -> None:
    client = signed_in(rita)
    assert client.get("/admin/accounts/rolegrant/x/change/", follow=True).status_code == 200
    assert client.post("/admin/accounts/rolegrant/x/decide/", {"confirm": "1"}).status_code == 404
    assert client.post("/admin/accounts/rolegrant/999/decide/", {"confirm": "1"}).status_code == 404
