"""The two-person rule against one person with two accounts, read from the audit chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts import services as account_services
from accounts.models import User
from campaigns import services
from campaigns.models import Campaign, TwoPersonRuleViolation
from campaigns.permissions import NOT_A_REVIEWER, can_decide, decision_refusal
from tests.conftest import make_staff
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def submitted(olivia: User, make_member: Callable[..., User]) -> Campaign:
    make_member("member@example.org")
    return services.submit_for_review(make_campaign(olivia), by=olivia)


def test_a_reviewer_with_no_hand_in_any_account_may_decide(rita: User, submitted: Campaign) -> None:
    assert decision_refusal(rita, submitted) is None and can_decide(rita, submitted)


def test_the_refusal_says_why(olivia: User, root: User, submitted: Campaign) -> None:
    assert decision_refusal(root, submitted) == NOT_A_REVIEWER
    both = make_staff("bea", "Ops", "Compliance")
    own = services.submit_for_review(make_campaign(both, name="Bea's"), by=both)
    assert decision_refusal(both, own) == (
        "You wrote this campaign; a second person must review it."
    )


def test_a_reviewer_who_changed_a_contributors_account_may_not_decide(
    olivia: User, submitted: Campaign
) -> None:
    lead = make_staff("lead", "Admin", "Compliance")
    olivia.last_name = "Renamed"
    account_services.update_account(olivia, by=lead)  # a profile edit: no control
    assert decision_refusal(lead, submitted) is None
    olivia.email = "lead+olivia@example.com"
    account_services.update_account(olivia, by=lead)
    assert decision_refusal(lead, submitted) == (
        "You changed the address of olivia, who authored, edited or submitted this campaign; "
        "a reviewer with no hand in their account must review it."
    )
    with pytest.raises(TwoPersonRuleViolation, match="changed the address of olivia"):
        services.approve_campaign(submitted, by=lead, digest=submitted.frozen_digest)
    with pytest.raises(TwoPersonRuleViolation):
        services.reject_campaign(submitted, by=lead, digest=submitted.frozen_digest, comment="x")


def test_an_editor_counts_like_the_author(olivia: User, oscar: User, make_member: Any) -> None:
    make_member("member@example.org")
    lead = make_staff("lead", "Admin", "Compliance")
    oscar.is_active = False
    account_services.update_account(oscar, by=make_staff("bob", "Admin"))
    oscar.is_active = True
    account_services.update_account(oscar, by=lead)
    campaign = make_campaign(olivia)
    campaign.subject_template = "Edited by Oscar"
    services.edit_campaign(campaign, by=oscar, changed=["subject_template"])
    campaign = services.submit_for_review(campaign, by=olivia)
    refusal = decision_refusal(lead, campaign)
    assert refusal is not None and refusal.startswith("You reactivated the account of oscar")


def test_the_rule_costs_two_queries(
    rita: User, submitted: Campaign, django_assert_num_queries: Any
) -> None:
    from campaigns.permissions import require_second_person

    with django_assert_num_queries(2):
        require_second_person(submitted, rita)


def test_review_page_shows_the_reason_instead_of_the_buttons(
    root: User, make_member: Callable[..., User]
) -> None:
    make_member("member@example.org")
    both = make_staff("bea", "Ops", "Compliance")
    campaign = services.submit_for_review(make_campaign(both), by=both)
    url = reverse("admin:campaigns_campaign_review", args=[campaign.pk])
    client = Client()
    client.force_login(both)
    html = client.get(url).content.decode()
    assert "You wrote this campaign; a second person must review it." in html
    assert 'id="approve-form"' not in html
    client.force_login(root)
    assert NOT_A_REVIEWER in client.get(url).content.decode()
