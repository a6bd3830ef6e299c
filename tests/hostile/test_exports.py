"""Weakness 7: recipients.csv wrote formula prefixes raw and declared no charset."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from accounts.models import User
from campaigns import services
from campaigns.audience import spreadsheet_safe
from tests.conftest import DEMO_PASSWORD
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_a_spreadsheet_would_run_gets_an_apostrophe(prefix: str) -> None:
    assert spreadsheet_safe(f"{prefix}HYPERLINK(1)") == f"'{prefix}HYPERLINK(1)"
    assert spreadsheet_safe("plain@example.org") == "plain@example.org"


def test_recipients_csv_is_utf8_and_neutralizes_formula_addresses(
    olivia: User, make_member: Callable[..., User]
) -> None:
    make_member("=sum@example.org")
    make_member("-sum@example.org", first_name="Zoë")
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    client = Client()
    assert client.login(username="olivia", password=DEMO_PASSWORD)
    response = client.get(reverse("admin:campaigns_campaign_recipients_csv", args=[campaign.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert isinstance(response, StreamingHttpResponse)
    content = b"".join(response.streaming_content)
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"))))
    addresses = sorted(row[2] for row in rows[1:])
    assert addresses == ["'-sum@example.org", "'=sum@example.org"]
