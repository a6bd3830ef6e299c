"""The review screen built for deciding: one sample at a time, "1 recipient", search, confirm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from campaigns import services
from campaigns.models import Campaign
from campaigns.review import decoded_header
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

LONG_NAME = "Evangelina Maximiliana Bartholomew-Featherstonehaugh de la Cruz-Ñúñez"


@pytest.fixture
def members(make_member: Callable[..., User]) -> list[User]:
    people = [make_member(f"m{i}@example.org", first_name=f"M{i}") for i in range(6)]
    people.append(make_member("longest@example.org", first_name=LONG_NAME, last_name="Ørsted"))
    return people


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def submitted(author: User, **fields: Any) -> Campaign:
    return services.submit_for_review(make_campaign(author, **fields), by=author)


def review_url(campaign: Campaign, query: str = "") -> str:
    return reverse("admin:campaigns_campaign_review", args=[campaign.pk]) + query


def test_to_row_says_one_recipient_and_decodes_as_a_mail_client(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    client = client_for(rita)
    first = client.get(review_url(campaign)).content.decode()
    tabs = first.count('class="cs-tab')
    assert tabs >= 2
    for n in range(1, tabs + 1):
        html = client.get(review_url(campaign, f"?sample={n}")).content.decode()
        assert '<strong class="cs-one-recipient">1 recipient</strong>' in html
        assert html.count('class="cs-sample"') == 1
    longest = client.get(review_url(campaign, "?address=longest@example.org")).content.decode()
    assert f"{LONG_NAME} Ørsted &lt;longest@example.org&gt;" in longest


def test_decoded_header_joins_encoded_words_like_a_mail_client() -> None:
    raw = "=?utf-8?q?Evangelina_Bartholomew-Featherstonehaugh_de?=\n =?utf-8?q?_la_Cruz?= <e@x.org>"
    assert decoded_header(raw) == "Evangelina Bartholomew-Featherstonehaugh de la Cruz <e@x.org>"


def test_render_for_an_address_outside_the_audience_says_so(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    html = client_for(rita).get(review_url(campaign, "?address=nobody@example.org")).content
    assert b"is not among this campaign" in html


def test_recipient_search_filters_by_address(olivia: User, rita: User, members: list[User]) -> None:
    campaign = submitted(olivia)
    html = client_for(rita).get(review_url(campaign, "?q=longest")).content.decode()
    recipients = html[html.index('id="recipients"') :]
    assert "longest@example.org" in recipients
    assert "m1@example.org" not in recipients


def test_approval_confirmation_shows_count_and_start(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    html = client_for(rita).get(review_url(campaign)).content.decode()
    assert "This sends <strong>7 messages</strong>" in html
    assert "as soon as you confirm" in html
    assert 'id="confirm-count"' not in html  # under the threshold


def test_large_send_needs_the_typed_count(
    olivia: User, rita: User, members: list[User], settings: Any
) -> None:
    settings.APPROVE_TYPED_COUNT_ABOVE = 5
    campaign = submitted(olivia)
    client = client_for(rita)
    assert 'id="confirm-count"' in client.get(review_url(campaign)).content.decode()
    url = reverse("admin:campaigns_campaign_approve", args=[campaign.pk])
    client.post(url, {"digest": campaign.frozen_digest, "confirm_count": "6"})
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    client.post(url, {"digest": campaign.frozen_digest, "confirm_count": "7"})
    campaign.refresh_from_db()
    assert campaign.status in (Campaign.Status.APPROVED, Campaign.Status.SENDING)


def test_author_gets_no_decision_controls(olivia: User, members: list[User]) -> None:
    campaign = submitted(olivia)
    html = client_for(olivia).get(review_url(campaign)).content.decode()
    assert 'id="approve-form"' not in html
    assert 'class="cs-refusal"' in html


def test_a_resubmission_shows_the_reviewer_what_changed(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    services.reject_campaign(
        campaign, by=rita, digest=campaign.frozen_digest, comment="Say when the change happens"
    )
    campaign.refresh_from_db()
    campaign.subject_template = 'Maintenance on Saturday, {{ first_name|default:"there" }}'
    services.edit_campaign(campaign, by=olivia, changed=["subject_template"])
    campaign = services.submit_for_review(campaign, by=olivia)
    html = client_for(rita).get(review_url(campaign)).content.decode()
    since = html[html.index('id="since-last-review"') : html.index('id="samples"')]
    assert "Say when the change happens" in since
    assert "Edited since: <strong>subject</strong>" in since
    assert '<span class="cs-add">+Maintenance on Saturday, M0</span>' in since
    assert '<span class="cs-del">-News for you, M0</span>' in since


def test_a_first_submission_has_no_changes_section(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = submitted(olivia)
    assert (
        'id="since-last-review"' not in client_for(rita).get(review_url(campaign)).content.decode()
    )
