"""Roles are groups: Ops compose, Compliance approves, Admin runs the system.

The groups are made by a data migration and re-synced after every migrate (and after a
test database flush, which empties auth tables and then sends post_migrate). They are
defined here and nowhere else: the admin shows them read-only, and a user's role
permissions come from these groups alone (never from permissions granted one by one).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission

from audit.chain import record_audit
from audit.models import AuditEvent

# The role that approves. Holding it (or the superuser flag) takes a second person: it is
# granted only when another Compliance member confirms it (accounts.RoleGrant), and only
# its holder ever chooses its password.
COMPLIANCE = "Compliance"

ROLES: dict[str, list[str]] = {
    "Ops": [
        "campaigns.add_campaign",
        "campaigns.change_campaign",
        "campaigns.view_campaign",
        "campaigns.submit_campaign",
        "campaigns.send_test_campaign",
        "campaigns.operate_campaign",
        "campaigns.view_delivery",
        "campaigns.view_senderidentity",
        "campaigns.view_approval",
        "audit.view_auditevent",
    ],
    "Compliance": [
        "campaigns.view_campaign",
        "campaigns.approve_campaign",
        "campaigns.send_test_campaign",
        "campaigns.operate_campaign",
        "campaigns.resolve_delivery",
        "campaigns.emergency_stop",
        "campaigns.view_delivery",
        "campaigns.view_senderidentity",
        "campaigns.view_approval",
        "audit.view_auditevent",
        "campaigns.view_suppression",
        "accounts.view_rolegrant",
        "accounts.decide_rolegrant",
    ],
    "Admin": [
        "accounts.add_user",
        "accounts.change_user",
        "accounts.view_user",
        "auth.view_group",
        "campaigns.view_campaign",
        "campaigns.emergency_stop",
        "campaigns.view_delivery",
        "campaigns.add_senderidentity",
        "campaigns.change_senderidentity",
        "campaigns.delete_senderidentity",
        "campaigns.view_senderidentity",
        "campaigns.add_suppression",
        "campaigns.view_suppression",
        "campaigns.delete_suppression",
        "campaigns.view_approval",
        "audit.view_auditevent",
        "campaigns.view_providerevent",
        "accounts.view_rolegrant",
    ],
}


def sync_roles(*, group_model: Any, permission_model: Any) -> dict[str, list[str]]:
    """Create the role groups and grant each its permissions (never removes anything).

    Returns what it added: {role: [permission, ...]} for each role that changed.
    """
    added: dict[str, list[str]] = {}
    for role, perms in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=role)
        held = set(group.permissions.values_list("pk", flat=True))
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            # A permission of an app whose models a migration has not made yet is skipped
            # here; post_migrate syncs again once every app is migrated.
            found = permission_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if found is not None and found.pk not in held:
                wanted.append(found)
                added.setdefault(role, []).append(perm)
        group.permissions.add(*wanted)
    return added


def sync_roles_after_migrate(**kwargs: Any) -> None:
    # post_migrate reaches apps in INSTALLED_APPS order; make sure every permission exists.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=kwargs.get("using", "default"))
    added = sync_roles(group_model=Group, permission_model=Permission)
    # Roles change only with the code, at a deployment. Once the audit chain has begun, the
    # chain says what a deployment added to a live system's roles; a fresh installation's
    # first sync (and a test database's) is the installation itself, not a change.
    if added and AuditEvent.objects.exists():
        record_audit("roles.synced", data={"added": added, "source": "migrate"})
