"""Issue 8, point 1: one Admin defeated the two-person rule alone.

A user in the Admin group only could tick superuser and Compliance on his own account,
create an Ops account with a password he chose, compose and submit as it, and approve as
himself, as a Compliance account he created, or as rita after setting her password. Each
path is driven here through the admin with a real client, and none gets an approval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import RoleGrant, User
from audit.chain import first_broken_link
from audit.models import AuditEvent
from campaigns.models import Approval, Campaign
from tests.accounts.admin_client import (
    add_user,
    change_user,
    page_messages,
    set_password_in_admin,
    sign_in,
    signed_in,
)
from tests.conftest import DEMO_PASSWORD, make_staff
from tests.factories import make_campaign, make_sender

pytestmark = pytest.mark.django_db

CHOSEN = "Chosen-by-adam-2026!"


@pytest.fixture
def adam(db: None) -> User:
    """Admin only: creates everyone's accounts, approves nothing."""
    return make_staff("adam", "Admin")


@pytest.fixture
def audience(make_member: Callable[..., User]) -> list[User]:
    return [make_member(f"member{i}@example.org", first_name=f"M{i}") for i in range(3)]


def roles(user: User) -> set[str]:
    return set(User.objects.get(pk=user.pk).groups.values_list("name", flat=True))


def campaign_url(name: str, campaign: Campaign) -> str:
    return reverse(f"admin:campaigns_campaign_{name}", args=[campaign.pk])


def compose_and_submit(client: Client) -> Campaign:
    sender = make_sender()
    form = {
        "name": "Adam's own campaign",
        "category": "announcement",
        "sender": sender.pk,
        "subject_template": "Hello",
        "text_template": "Hi {{ unsubscribe_url }} " + sender.postal_address,
        "html_template": "",
        "audience_locale": "",
        "audience_attribute_name": "",
        "audience_attribute_value": "",
        "audience_addresses": "",
    }
    assert client.post(reverse("admin:campaigns_campaign_add"), form).status_code == 302
    campaign = Campaign.objects.get(name="Adam's own campaign")
    assert client.post(campaign_url("submit", campaign)).status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    return campaign


def approve(client: Client, campaign: Campaign) -> Any:
    return client.post(campaign_url("approve", campaign), {"digest": campaign.frozen_digest})


def assert_unapproved(campaign: Campaign) -> None:
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert campaign.approved_by is None
    assert not Approval.objects.filter(campaign=campaign).exists()


def test_one_admin_alone_gets_no_approval_by_any_path(
    adam: User,
    rita: User,
    audience: list[User],
    django_capture_on_commit_callbacks: Any,
) -> None:
    admin = sign_in("adam", DEMO_PASSWORD)
    assert admin is not None

    # 1. Tick superuser and Compliance on his own account: refused in words, nothing changes.
    response = change_user(admin, adam, is_superuser=True, groups=["Admin", "Compliance"])
    assert response.status_code == 200
    assert "You cannot change your own roles" in response.content.decode()
    adam.refresh_from_db()
    assert not adam.is_superuser and roles(adam) == {"Admin"}
    assert not RoleGrant.objects.filter(user=adam).exists()

    # 2. Create an Ops account with a password he chooses: normal administration, allowed.
    add_user(admin, "eve", "eve@example.com", CHOSEN)
    eve = User.objects.get(username="eve")
    change_user(admin, eve, is_staff=True, groups=["Ops"])
    assert roles(eve) == {"Ops"}

    # 3. Sign in as that account, compose and submit.
    as_eve = sign_in("eve", CHOSEN)
    assert as_eve is not None
    campaign = compose_and_submit(as_eve)

    # 4. Approve as himself: his role does not approve.
    assert approve(admin, campaign).status_code == 403
    assert_unapproved(campaign)

    # 5. A Compliance account he creates cannot act until someone else confirms it.
    add_user(admin, "carl", "carl@example.com", CHOSEN)
    carl = User.objects.get(username="carl")
    response = change_user(admin, carl, is_staff=True, groups=["Compliance"])
    assert any("waiting" in m for m in page_messages(response))
    assert roles(carl) == set()
    grant = RoleGrant.objects.get(user=carl)
    assert grant.outcome == RoleGrant.Outcome.PENDING and grant.requested_by == adam
    as_carl = sign_in("carl", CHOSEN)
    assert as_carl is not None
    assert approve(as_carl, campaign).status_code == 403
    decide = reverse("admin:accounts_rolegrant_decide", args=[grant.pk])
    assert admin.post(decide, {"confirm": "1"}).status_code == 403
    assert as_carl.post(decide, {"confirm": "1"}).status_code == 403
    # Nor will superuser on his Ops account do: it waits as well.
    change_user(admin, eve, is_superuser=True)
    eve.refresh_from_db()
    assert not eve.is_superuser
    assert RoleGrant.objects.filter(user=eve, kind="superuser", outcome="pending").exists()

    # 6. rita: he cannot choose her password, nor point her address at his mailbox.
    response = set_password_in_admin(admin, rita, CHOSEN)
    assert any("Only rita can choose the password" in m for m in page_messages(response))
    assert sign_in("rita", CHOSEN) is None
    assert sign_in("rita", DEMO_PASSWORD) is not None
    response = change_user(admin, rita, email="adam+rita@example.com")
    assert "Only rita may change the address" in response.content.decode()
    rita.refresh_from_db()
    assert rita.email == "rita@example.com"
    # He can take her role away, then set her password: she is then no reviewer, and the
    # role comes back only through a grant that someone else confirms (nobody can here).
    change_user(admin, rita, groups=[])
    set_password_in_admin(admin, rita, CHOSEN)
    change_user(admin, rita, groups=["Compliance"])
    as_rita = sign_in("rita", CHOSEN)
    assert as_rita is not None
    assert approve(as_rita, campaign).status_code == 403
    rita_grant = RoleGrant.objects.get(user=rita, outcome="pending")
    assert (
        as_rita.post(
            reverse("admin:accounts_rolegrant_decide", args=[rita_grant.pk]), {"confirm": "1"}
        ).status_code
        == 403
    )
    assert roles(rita) == set()

    # Nothing was approved, nobody holds a role he gave himself, and the chain holds.
    assert_unapproved(campaign)
    adam.refresh_from_db()
    assert not adam.is_superuser and roles(adam) == {"Admin"}
    assert not User.objects.filter(groups__name="Compliance").exists()
    assert first_broken_link() is None
    # Each of these steps is in the chain, with him as the actor.
    actions = set(AuditEvent.objects.filter(actor_id=adam.pk).values_list("action", flat=True))
    assert {
        "user.created",
        "user.roles_granted",
        "user.grant_requested",
        "user.roles_revoked",
        "user.password_set",
    } <= actions


def test_a_second_compliance_member_confirming_his_account_locks_him_out_of_it(
    adam: User, rita: User, django_capture_on_commit_callbacks: Any
) -> None:
    admin = signed_in(adam)
    add_user(admin, "carl", "carl@example.com", CHOSEN)
    carl = User.objects.get(username="carl")
    change_user(admin, carl, is_staff=True, groups=["Compliance"])
    # He signs in as carl and "changes carl's own password": still a password he knows.
    as_carl = sign_in("carl", CHOSEN)
    assert as_carl is not None
    response = as_carl.post(
        reverse("admin:password_change"),
        {
            "old_password": CHOSEN,
            "new_password1": "Another-one-he-knows-9",
            "new_password2": "Another-one-he-knows-9",
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    carl.refresh_from_db()
    assert carl.password_set_by == carl and not carl.password_owner_only

    grant = RoleGrant.objects.get(user=carl)
    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(rita).post(
            reverse("admin:accounts_rolegrant_decide", args=[grant.pk]), {"confirm": "1"}
        )
    assert response.status_code == 302
    carl.refresh_from_db()
    assert roles(carl) == {"Compliance"}
    # The password anyone but carl could know is gone; the link went to carl's address.
    assert not carl.has_usable_password()
    assert sign_in("carl", "Another-one-he-knows-9") is None
    assert as_carl.get(reverse("admin:index")).status_code == 302  # his session ended too
    assert [m.to for m in mail.outbox] == [["carl@example.com"]]


@pytest.mark.parametrize(
    "control",
    ["created", "reactivated", "set the password of", "changed the address of", "granted roles"],
)
def test_a_reviewer_who_controls_a_contributors_account_is_refused_with_the_reason(
    control: str, rita: User, make_member: Callable[..., User]
) -> None:
    make_member("member@example.org")
    # Ada is Admin and (properly confirmed) Compliance: a small team's lead.
    ada = make_staff("ada", "Admin", "Compliance")
    admin = signed_in(ada)
    if control == "created":
        add_user(admin, "eve", "eve@example.com", CHOSEN)
        eve = User.objects.get(username="eve")
        eve.is_staff = True
        eve.save()
        eve.groups.add(Group.objects.get(name="Ops"))
    else:
        eve = make_staff("eve", *([] if control == "granted roles" else ["Ops"]))
        actions: dict[str, Callable[[], Any]] = {
            "reactivated": lambda: (
                change_user(signed_in(make_staff("bob", "Admin")), eve, is_active=False),
                change_user(admin, eve, is_active=True),
            ),
            "set the password of": lambda: set_password_in_admin(admin, eve, CHOSEN),
            "changed the address of": lambda: change_user(admin, eve, email="ada+eve@example.com"),
            "granted roles": lambda: change_user(admin, eve, groups=["Ops"]),
        }
        actions[control]()
    campaign = make_campaign(eve)
    from campaigns import services as campaign_services

    campaign = campaign_services.submit_for_review(campaign, by=eve)

    response = approve(admin, campaign)
    assert response.status_code == 302
    assert_unapproved(campaign)
    page = admin.get(campaign_url("review", campaign)).content.decode()
    assert f"You {control}" in page and "eve" in page
    assert 'id="approve-form"' not in page
    # Rita, who has no hand in eve's account, approves it.
    assert approve(signed_in(rita), campaign).status_code == 302
    campaign.refresh_from_db()
    assert campaign.approved_by == rita


def test_grants_are_decided_by_a_third_person_even_against_the_database(
    adam: User, rita: User
) -> None:
    carl = make_staff("carl")
    grant = services.request_grant(carl, RoleGrant.Kind.COMPLIANCE, by=rita)
    # rita asked, so rita may not confirm; the service says so and the database agrees.
    with pytest.raises(services.AccountRefused, match="You asked for this grant"):
        services.decide_grant(grant, by=rita, confirm=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        RoleGrant.objects.filter(pk=grant.pk).update(
            outcome="confirmed", decided_by=rita, decided_at=grant.requested_at
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        RoleGrant.objects.create(user=carl, kind="superuser", requested_by=carl)
    grant.refresh_from_db()
    assert grant.outcome == RoleGrant.Outcome.PENDING
    assert roles(carl) == set()


def test_permissions_granted_one_by_one_and_group_edits_open_nothing(
    root: User, olivia: User, audience: list[User]
) -> None:
    from campaigns import services as campaign_services

    campaign = campaign_services.submit_for_review(make_campaign(olivia), by=olivia)
    # A superuser Admin puts the approve permission on himself directly (a shell, an old
    # admin form): it counts for nothing.
    root.user_permissions.add(Permission.objects.get(codename="approve_campaign"))
    admin = signed_in(root)
    assert approve(admin, campaign).status_code == 403
    # The admin offers no per-user permissions, and the roles cannot be edited there.
    page = admin.get(reverse("admin:accounts_user_change", args=[root.pk])).content.decode()
    assert "user_permissions" not in page
    compliance = Group.objects.get(name="Compliance")
    url = reverse("admin:auth_group_change", args=[compliance.pk])
    assert admin.get(url).status_code == 200
    admin.post(url, {"name": "Compliance", "permissions": []})
    assert admin.post(reverse("admin:auth_group_add"), {"name": "Approvers"}).status_code == 403
    assert compliance.permissions.filter(codename="approve_campaign").exists()
    assert not Group.objects.filter(name="Approvers").exists()
    assert_unapproved(campaign)
