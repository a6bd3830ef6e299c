"""The role groups exist wherever the app runs, including after a test-database flush."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from accounts.roles import ROLES


def _assert_roles() -> None:
    for role, perms in ROLES.items():
        group = Group.objects.get(name=role)
        granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert granted == set(perms), role


@pytest.mark.django_db(transaction=True)
def test_roles_survive_a_flush_of_the_database() -> None:
    # A flush empties the auth tables; post_migrate (which flush sends) re-syncs the roles.
    # Flushed here, explicitly: which test ran before this one (a serialized_rollback test's
    # flush skips post_migrate) must not decide the outcome.
    call_command("flush", interactive=False, verbosity=0)
    _assert_roles()


@pytest.mark.django_db
def test_only_compliance_approves() -> None:
    holders = [role for role, perms in ROLES.items() if "campaigns.approve_campaign" in perms]
    assert holders == ["Compliance"]
    _assert_roles()
