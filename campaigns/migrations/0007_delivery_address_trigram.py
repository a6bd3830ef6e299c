"""PostgreSQL: a trigram index on lower(address), for the recipient table's address search.

A search without an "@" looks for a substring of the address. Without an index a term
that matches few rows (or none) reads the whole ledger, about half a second at a million
deliveries; a GIN index of trigrams finds them in milliseconds, and its statistics on
lower(address) let the planner see that a common term is better served by walking the
ledger in id order until a page is full. pg_trgm is a trusted extension (PostgreSQL 13
and later), so the database owner may create it. Built CONCURRENTLY, outside a
transaction, so a ledger in use keeps taking writes meanwhile. Nothing on SQLite, where
the search stays a scan bounded by the page size.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

INDEX = "campaigns_delivery_address_trgm"


def create_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} "
        "ON campaigns_delivery USING gin (lower(address) gin_trgm_ops)"
    )
    # Statistics on the indexed expression: without them the planner guesses a fixed
    # selectivity for every LIKE, and a common term would take the index instead of the
    # id order.
    schema_editor.execute("ANALYZE campaigns_delivery")


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("campaigns", "0006_approvals_are_retained")]

    operations = [
        TrigramExtension(),
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
