"""The recipient table's address search: substrings without an "@", and on PostgreSQL by index."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import User
from campaigns import services
from campaigns.models import Campaign, Delivery
from campaigns.views import address_search
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

ADDRESSES = [
    "ada.lovelace@example.org",
    "Bruno.Zimmer@example.net",
    "chloe@lovelace-fans.example.org",
    "dan_100pct@example.org",
    "dan1100xpct@example.org",
]


@pytest.fixture
def campaign(olivia: User, make_member: Callable[..., User]) -> Campaign:
    for address in ADDRESSES:
        make_member(address)
    return services.submit_for_review(make_campaign(olivia), by=olivia)


def shown(client: Client, campaign: Campaign, query: str) -> set[str]:
    url = reverse("admin:campaigns_campaign_deliveries", args=[campaign.pk])
    response = client.get(url, {"q": query})
    assert response.status_code == 200
    rows = response.context["rows"]
    return {delivery.address for delivery in rows}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("lovelace", {"ada.lovelace@example.org", "chloe@lovelace-fans.example.org"}),
        ("LOVELACE", {"ada.lovelace@example.org", "chloe@lovelace-fans.example.org"}),
        ("zimmer", {"Bruno.Zimmer@example.net"}),
        ("example.net", {"Bruno.Zimmer@example.net"}),
        # LIKE's wildcards are the characters themselves: "_" is not "any character".
        ("_100", {"dan_100pct@example.org"}),
        ("%", set()),
        ("nobody", set()),
        # With an "@": one whole address, whatever its case.
        ("bruno.zimmer@EXAMPLE.net", {"Bruno.Zimmer@example.net"}),
        ("lovelace@example.org", set()),
    ],
)
def test_search_finds_addresses_by_substring_without_an_at_sign(
    query: str, expected: set[str], campaign: Campaign, rita: User
) -> None:
    client = Client()
    client.force_login(rita)
    assert shown(client, campaign, query) == expected


def test_the_review_screen_searches_the_same_way(campaign: Campaign, rita: User) -> None:
    client = Client()
    client.force_login(rita)
    url = reverse("admin:campaigns_campaign_review", args=[campaign.pk])
    page = client.get(url, {"q": "ZIMMER"}).content.decode()
    listed = page[page.index('id="recipients"') :]
    assert "Bruno.Zimmer@example.net" in listed
    assert "ada.lovelace@example.org" not in listed


LEDGER_ROWS = 100_000


@pytest.mark.needs_postgres
def test_on_postgresql_a_rare_term_and_an_exact_address_are_found_by_index(
    olivia: User,
) -> None:
    """The page's own query, explained: a rare substring through the trigram index, an
    address through the unique (campaign, lower(address)) one; never a scan of the ledger.

    Enough rows (and fresh statistics) that the planner's choice is not a coin toss: at
    100,000 rows it costs a sequential scan about ten times the trigram index (at 20,000
    the two are close, and the scan can win)."""
    campaign = make_campaign(olivia)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name,
              is_staff, is_active, date_joined, email, locale, attributes, seed_addresses,
              time_zone, password_owner_only)
            SELECT '!', false, 'search-' || i, '', '', false, true, now(),
                   'search-' || i || '@example.org', 'en', '{}', '', '', false
            FROM generate_series(1, %s) AS i
            """,
            [LEDGER_ROWS],
        )
        cursor.execute(
            """
            INSERT INTO campaigns_delivery (campaign_id, user_id, address, recipient_data,
              status, attempts, last_error, message_id, provider_message_id, created_at,
              updated_at)
            SELECT %s, id, email, '{}', 'pending', 0, '', '', '', now(), now()
            FROM accounts_user WHERE username LIKE 'search-%%'
            """,
            [campaign.pk],
        )
        cursor.execute("ANALYZE campaigns_delivery")

    def plan(query: str, *, exact: bool) -> str:
        rows = address_search(Delivery.objects.filter(campaign=campaign), query, exact=exact)
        page = rows.filter(id__gt=0).order_by("id").only("id", "address", "status")[:51]
        assert len(page) == 1, query  # the one row it names
        return page.explain()

    rare = plan("h-12345@", exact=False)
    assert "campaigns_delivery_address_trgm" in rare, rare
    assert "Seq Scan on campaigns_delivery" not in rare, rare
    exact = plan("Search-12345@Example.org", exact=True)
    assert "campaigns_delivery_one_per_address" in exact, exact
    assert "Seq Scan on campaigns_delivery" not in exact, exact
