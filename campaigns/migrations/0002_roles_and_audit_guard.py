"""Roles as groups, the audit chain head, and (on PostgreSQL) an append-only audit table."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from accounts.roles import ROLES, sync_roles

AUDIT_TRIGGER = """
CREATE OR REPLACE FUNCTION campaigns_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'campaigns_auditevent is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER campaigns_auditevent_append_only
    BEFORE UPDATE OR DELETE ON campaigns_auditevent
    FOR EACH ROW EXECUTE FUNCTION campaigns_auditevent_refuse_change();
"""
AUDIT_TRIGGER_REVERSE = """
DROP TRIGGER IF EXISTS campaigns_auditevent_append_only ON campaigns_auditevent;
DROP FUNCTION IF EXISTS campaigns_auditevent_refuse_change();
"""


def create_roles(apps: Any, schema_editor: Any) -> None:
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after migrate; the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None

    sync_roles(
        group_model=apps.get_model("auth", "Group"),
        permission_model=apps.get_model("auth", "Permission"),
    )
    apps.get_model("campaigns", "AuditChainHead").objects.get_or_create(pk=1)


def drop_roles(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


def add_audit_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(AUDIT_TRIGGER, params=None)


def drop_audit_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(AUDIT_TRIGGER_REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0001_initial"),
        ("accounts", "0002_audience_attribute"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_roles, drop_roles),
        migrations.RunPython(add_audit_trigger, drop_audit_trigger),
    ]
