"""Issue 8, point 3: a test send reached the audience.

Seed addresses took any address in any number: with members' addresses as seeds, an Ops
user sent an unreviewed draft to 17 audience members. Seeds are now a few staff
addresses, refused by name at the admin form and again at send time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services
from campaigns.models import Campaign, IllegalTransition
from tests.accounts.admin_client import change_user, page_messages, signed_in
from tests.conftest import make_staff
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def members(make_member: Callable[..., User]) -> list[User]:
    return [make_member(f"member{i}@example.org") for i in range(17)]


def test_admin_form_refuses_seventeen_audience_addresses_naming_them(
    root: User, olivia: User, members: list[User]
) -> None:
    seeds = "\n".join(member.email for member in members)
    response = change_user(signed_in(root), olivia, seed_addresses=seeds)
    page = response.content.decode()
    assert response.status_code == 200
    assert "At most 5 seed addresses are allowed; there are 17." in page
    assert "“member0@example.org” belongs to an audience member" in page
    olivia.refresh_from_db()
    assert olivia.seed_addresses == ""
    assert not AuditEvent.objects.filter(action="user.seed_addresses_changed").exists()


def test_one_members_address_among_staff_seeds_is_refused_by_name(
    root: User, olivia: User, oscar: User, members: list[User]
) -> None:
    seeds = f"{oscar.email}\n{members[3].email.upper()}"
    page = change_user(signed_in(root), olivia, seed_addresses=seeds).content.decode()
    assert "“MEMBER3@EXAMPLE.ORG” belongs to an audience member" in page
    olivia.refresh_from_db()
    assert olivia.seed_addresses == ""


def test_send_refuses_seeds_stored_before_the_rule_and_sends_nothing(
    olivia: User, members: list[User]
) -> None:
    # Seeds written before this rule existed (or straight into the database).
    olivia.seed_addresses = "\n".join(m.email for m in members[:3])
    olivia.save()
    campaign = make_campaign(olivia)
    with pytest.raises(IllegalTransition, match="belongs to an audience member"):
        services.send_test(campaign, by=olivia)
    response = signed_in(olivia).post(
        reverse("admin:campaigns_campaign_test_send", args=[campaign.pk]), follow=True
    )
    assert any("member0@example.org" in m for m in page_messages(response))
    assert mail.outbox == []
    assert not AuditEvent.objects.filter(action="campaign.test_sent").exists()


def test_an_internal_domain_does_not_admit_a_member_inside_it(
    olivia: User, settings: Any, make_member: Callable[..., User]
) -> None:
    settings.TEST_SEND_INTERNAL_DOMAINS = ["example.org"]
    member = make_member("customer@example.org")
    olivia.seed_addresses = f"phone@example.org\n{member.email}"
    olivia.save()
    with pytest.raises(IllegalTransition, match="customer@example.org” belongs to an audience"):
        services.send_test(make_campaign(olivia), by=olivia)
    assert mail.outbox == []


def test_send_refuses_too_many_or_unknown_or_deactivated_staff_addresses(
    olivia: User, settings: Any
) -> None:
    settings.TEST_SEND_MAX_SEEDS = 2
    staff = [make_staff(f"s{i}") for i in range(3)]
    campaign = make_campaign(olivia)
    cases = {
        "\n".join(s.email for s in staff): "At most 2 seed addresses",
        "stranger@example.net": "is not the address of an active staff account",
    }
    gone = make_staff("gone", is_active=False)
    cases[gone.email] = "belongs to a deactivated staff account"
    for seeds, why in cases.items():
        olivia.seed_addresses = seeds
        olivia.save()
        with pytest.raises(IllegalTransition, match=why):
            services.send_test(campaign, by=olivia)
    assert mail.outbox == []
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.DRAFT
