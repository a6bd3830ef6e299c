"""The ledger's indexes: each one is written for every frozen row and every status change."""

from __future__ import annotations

import pytest
from django.db import connection

from campaigns.models import Delivery

pytestmark = pytest.mark.django_db


def _indexes() -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Delivery._meta.db_table)
    return {
        name: list(info["columns"])
        for name, info in constraints.items()
        if info["index"] and not info["primary_key"]
    }


def test_no_index_on_the_campaign_alone_but_composites_lead_with_it() -> None:
    indexes = _indexes()
    assert ["campaign_id"] not in indexes.values(), indexes
    # Lookups by campaign alone (progress, the recipient table, the foreign key's checks)
    # are served by these, each led by the campaign.
    assert indexes["campaigns_delivery_work"] == ["campaign_id", "status"]
    assert indexes["campaigns_delivery_one_per_user"] == ["campaign_id", "user_id"]
    assert indexes["campaigns_delivery_one_per_address"][0] == "campaign_id"
