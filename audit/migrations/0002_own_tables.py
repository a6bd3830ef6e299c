"""The audit tables take the audit app's names; the append-only trigger is re-made for them."""

from __future__ import annotations

from typing import Any

from django.db import migrations

# PostgreSQL: even a bug or a hand-written query cannot rewrite or delete history.
AUDIT_TRIGGER = """
DROP TRIGGER IF EXISTS campaigns_auditevent_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS campaigns_auditevent_refuse_change();
CREATE OR REPLACE FUNCTION audit_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_auditevent is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_auditevent_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_auditevent_refuse_change();
"""
AUDIT_TRIGGER_REVERSE = """
DROP TRIGGER IF EXISTS audit_auditevent_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_auditevent_refuse_change();
CREATE OR REPLACE FUNCTION campaigns_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'campaigns_auditevent is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER campaigns_auditevent_append_only
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION campaigns_auditevent_refuse_change();
"""


def add_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(AUDIT_TRIGGER, params=None)


def restore_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(AUDIT_TRIGGER_REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("campaigns", "0004_audit_moved_to_audit_app"),
    ]

    operations = [
        migrations.AlterModelTable(name="auditchainhead", table=None),
        migrations.AlterModelTable(name="auditevent", table=None),
        migrations.RenameIndex(
            model_name="auditevent", new_name="audit_event_object", old_name="campaigns_audit_object"
        ),
        migrations.RunPython(add_trigger, restore_trigger),
    ]
