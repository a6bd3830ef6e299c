"""Drop the ledger's single-column campaign index.

The three composite indexes on the ledger all lead with the campaign, so they serve every
lookup by campaign alone (and the foreign key's checks); the fourth index only cost an
entry for every frozen row and every status change. State: the foreign key without
`db_index`. Database: the index dropped by name, because Django's AlterField on SQLite
would rebuild the table and lose the counter triggers of 0005. On PostgreSQL it is dropped
CONCURRENTLY, outside a transaction, so a ledger in use keeps taking writes meanwhile.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

INDEX = "campaigns_delivery_campaign_id_87e5668a"


def drop_index(apps: Any, schema_editor: Any) -> None:
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {INDEX}")


def create_index(apps: Any, schema_editor: Any) -> None:
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS {INDEX} ON campaigns_delivery (campaign_id)"
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("campaigns", "0008_sender_name_is_person_text")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="delivery",
                    name="campaign",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="deliveries",
                        to="campaigns.campaign",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_index, create_index, elidable=False),
            ],
        ),
    ]
