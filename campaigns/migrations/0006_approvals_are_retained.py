"""PostgreSQL: a decision cannot be deleted or rewritten, even by a hand-written query.

Only voiding (setting voided_at once, when an edit voids the approval) may change a row.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

APPROVAL_TRIGGER = """
CREATE OR REPLACE FUNCTION campaigns_approval_refuse_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'campaigns_approval rows are retained (DELETE refused)';
    END IF;
    IF OLD.voided_at IS NOT NULL
       OR ROW(NEW.id, NEW.campaign_id, NEW.reviewer_id, NEW.decision, NEW.comment, NEW.digest,
              NEW.recipient_count, NEW.audience_hash, NEW.samples, NEW.created_at)
          IS DISTINCT FROM
          ROW(OLD.id, OLD.campaign_id, OLD.reviewer_id, OLD.decision, OLD.comment, OLD.digest,
              OLD.recipient_count, OLD.audience_hash, OLD.samples, OLD.created_at)
    THEN
        RAISE EXCEPTION 'campaigns_approval is immutable but for voiding (UPDATE refused)';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS campaigns_approval_retained ON campaigns_approval;
CREATE TRIGGER campaigns_approval_retained
    BEFORE UPDATE OR DELETE ON campaigns_approval
    FOR EACH ROW EXECUTE FUNCTION campaigns_approval_refuse_change();
"""
APPROVAL_TRIGGER_REVERSE = """
DROP TRIGGER IF EXISTS campaigns_approval_retained ON campaigns_approval;
DROP FUNCTION IF EXISTS campaigns_approval_refuse_change();
"""


def add_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPROVAL_TRIGGER, params=None)


def drop_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPROVAL_TRIGGER_REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0005_delivery_counts"),
    ]

    operations = [migrations.RunPython(add_trigger, drop_trigger)]
