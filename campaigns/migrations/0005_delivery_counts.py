"""Per-campaign delivery counts kept by triggers, so progress never scans the ledger."""

from __future__ import annotations

import django.db.models.deletion
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps
from django.db import migrations, models


# PostgreSQL: statement-level triggers with transition tables, one per event (a trigger with
# transition tables takes one event). One INSERT per statement that touches the ledger, with
# one row per (campaign, status) whose count it changed; an UPDATE that leaves status alone
# nets to nothing and inserts nothing. Rows are only inserted, never updated, so concurrent
# workers never wait on each other here.
PG_FUNCTION = """
CREATE OR REPLACE FUNCTION campaigns_delivery_count() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
      SELECT campaign_id, status, date_trunc('minute', now()), count(*)
      FROM new_rows GROUP BY campaign_id, status;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
      SELECT campaign_id, status, date_trunc('minute', now()), -count(*)
      FROM old_rows WHERE EXISTS (SELECT 1 FROM campaigns_campaign c WHERE c.id = campaign_id)
      GROUP BY campaign_id, status;
  ELSE
    INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
      SELECT campaign_id, status, date_trunc('minute', now()), sum(d) FROM (
        SELECT campaign_id, status, count(*) AS d FROM new_rows GROUP BY campaign_id, status
        UNION ALL
        SELECT campaign_id, status, -count(*) FROM old_rows GROUP BY campaign_id, status
      ) AS moved
      GROUP BY campaign_id, status HAVING sum(d) <> 0;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER campaigns_delivery_count_ins AFTER INSERT ON campaigns_delivery
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delivery_count();
CREATE TRIGGER campaigns_delivery_count_upd AFTER UPDATE ON campaigns_delivery
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delivery_count();
CREATE TRIGGER campaigns_delivery_count_del AFTER DELETE ON campaigns_delivery
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delivery_count();
CREATE OR REPLACE FUNCTION campaigns_campaign_drop_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM campaigns_deliverycount WHERE campaign_id = OLD.id;
  RETURN NULL;
END $$;
CREATE TRIGGER campaigns_campaign_drop_counts AFTER DELETE ON campaigns_campaign
  FOR EACH ROW EXECUTE FUNCTION campaigns_campaign_drop_counts();
"""
PG_DROP = """
DROP TRIGGER IF EXISTS campaigns_delivery_count_ins ON campaigns_delivery;
DROP TRIGGER IF EXISTS campaigns_delivery_count_upd ON campaigns_delivery;
DROP TRIGGER IF EXISTS campaigns_delivery_count_del ON campaigns_delivery;
DROP FUNCTION IF EXISTS campaigns_delivery_count();
DROP TRIGGER IF EXISTS campaigns_campaign_drop_counts ON campaigns_campaign;
DROP FUNCTION IF EXISTS campaigns_campaign_drop_counts();
"""


# SQLite has row triggers only. It also has a single writer, so nothing can contend for a
# counter row: each change adds to its (campaign, status, minute) row, made when missing
# (a unique index that exists on SQLite only; PostgreSQL's rows are append-only).
SQLITE_UNIQUE = (
    "CREATE UNIQUE INDEX campaigns_deliverycount_once"
    " ON campaigns_deliverycount (campaign_id, status, minute);"
)


def _sqlite_bump(ref: str, sign: str) -> str:
    return f"""
    INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
      VALUES ({ref}.campaign_id, {ref}.status, strftime('%Y-%m-%d %H:%M:00', 'now'), {sign}1)
      ON CONFLICT (campaign_id, status, minute) DO UPDATE SET n = n + excluded.n;"""


SQLITE_TRIGGERS = [
    SQLITE_UNIQUE,
    "CREATE TRIGGER campaigns_delivery_count_ins AFTER INSERT ON campaigns_delivery BEGIN"
    + _sqlite_bump("NEW", "")
    + " END;",
    "CREATE TRIGGER campaigns_delivery_count_upd AFTER UPDATE OF status, campaign_id"
    " ON campaigns_delivery"
    " WHEN OLD.status IS NOT NEW.status OR OLD.campaign_id IS NOT NEW.campaign_id BEGIN"
    + _sqlite_bump("OLD", "-")
    + _sqlite_bump("NEW", "")
    + " END;",
    # A ledger row outlives its campaign only while a whole table is flushed (tests): a
    # count for a campaign that is gone would break its foreign key, so none is written.
    "CREATE TRIGGER campaigns_delivery_count_del AFTER DELETE ON campaigns_delivery"
    " WHEN EXISTS (SELECT 1 FROM campaigns_campaign WHERE id = OLD.campaign_id) BEGIN"
    + _sqlite_bump("OLD", "-")
    + " END;",
    "CREATE TRIGGER campaigns_campaign_drop_counts AFTER DELETE ON campaigns_campaign BEGIN"
    " DELETE FROM campaigns_deliverycount WHERE campaign_id = OLD.id; END;",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS campaigns_delivery_count_ins;",
    "DROP TRIGGER IF EXISTS campaigns_delivery_count_upd;",
    "DROP TRIGGER IF EXISTS campaigns_delivery_count_del;",
    "DROP TRIGGER IF EXISTS campaigns_campaign_drop_counts;",
    "DROP INDEX IF EXISTS campaigns_deliverycount_once;",
]

# The ledger as it stands when the triggers arrive, counted once.
BACKFILL = """
INSERT INTO campaigns_deliverycount (campaign_id, status, minute, n)
  SELECT campaign_id, status, {now}, count(*) FROM campaigns_delivery GROUP BY campaign_id, status
"""


def install(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION)
        schema_editor.execute(BACKFILL.format(now="date_trunc('minute', now())"))
    else:
        for sql in SQLITE_TRIGGERS:
            schema_editor.execute(sql)
        schema_editor.execute(BACKFILL.format(now="strftime('%Y-%m-%d %H:%M:00', 'now')"))


def uninstall(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)
    else:
        for sql in SQLITE_DROP:
            schema_editor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ('campaigns', '0004_audit_moved_to_audit_app'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeliveryCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(max_length=20)),
                ('minute', models.DateTimeField()),
                ('n', models.BigIntegerField()),
                ('campaign', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='campaigns.campaign')),
            ],
            options={
                'indexes': [models.Index(fields=['campaign', 'minute'], name='campaigns_deliverycount_c_m')],
            },
        ),
        migrations.RunPython(install, uninstall),
    ]
