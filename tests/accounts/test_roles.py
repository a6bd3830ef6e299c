"""The role groups exist wherever the app runs, including after a test-database flush."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts.roles import ROLES


def _assert_roles() -> None:
    for role, perms in ROLES.items():
        group = Group.objects.get(name=role)
        granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert granted == set(perms), role


@pytest.mark.django_db(transaction=True)
def test_roles_exist_in_a_transactional_test() -> None:
    _assert_roles()


@pytest.mark.django_db(transaction=True)
def test_roles_survive_the_flush_after_the_previous_transactional_test() -> None:
    # The flush at the end of the test above empties auth tables; post_migrate re-syncs them.
    _assert_roles()


@pytest.mark.django_db
def test_only_compliance_approves() -> None:
    holders = [role for role, perms in ROLES.items() if "campaigns.approve_campaign" in perms]
    assert holders == ["Compliance"]
    _assert_roles()
