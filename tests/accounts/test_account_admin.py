"""The user admin: every change audited (never a password), passwords by their owners."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from tests.accounts.admin_client import (
    add_user,
    change_user,
    page_messages,
    set_password_in_admin,
    sign_in,
    signed_in,
)
from tests.conftest import DEMO_PASSWORD, make_staff

pytestmark = pytest.mark.django_db

CHOSEN = "Chosen-by-root-2026!"


def events_about(user: User) -> list[tuple[str, int | None, dict[str, Any]]]:
    return list(
        AuditEvent.objects.filter(object_type="accounts.user", object_id=str(user.pk))
        .order_by("seq")
        .values_list("action", "actor_id", "data")
    )


def test_creating_an_account_is_audited_without_its_password(root: User) -> None:
    add_user(signed_in(root), "eve", "eve@example.com", CHOSEN)
    eve = User.objects.get(username="eve")
    [(action, actor, data)] = events_about(eve)
    assert (action, actor) == ("user.created", root.pk)
    assert data["password"] == "chosen by the creator" and data["source"] == "admin"
    assert CHOSEN not in str(data) and eve.password not in str(data)
    assert eve.password_set_by == root and not eve.password_owner_only


def test_each_kind_of_change_is_its_own_event_with_old_and_new_values(root: User) -> None:
    eve = make_staff("eve", "Ops", first_name="Eve", is_active=False)
    change_user(
        signed_in(root),
        eve,
        first_name="Evelyn",
        email="evelyn@example.com",
        seed_addresses="root@example.com",
        is_active=True,
        is_staff=False,
        groups=["Admin"],
    )
    found = {action: (actor, data) for action, actor, data in events_about(eve)}
    assert {actor for actor, _ in found.values()} == {root.pk}
    assert found["user.changed"][1]["changes"] == {"first_name": ["Eve", "Evelyn"]}
    assert found["user.email_changed"][1] | {"username": "eve"} == {
        "username": "eve",
        "old": "eve@example.com",
        "new": "evelyn@example.com",
    }
    assert found["user.seed_addresses_changed"][1]["new"] == ["root@example.com"]
    assert found["user.roles_granted"][1]["roles"] == ["Admin"]
    assert found["user.roles_revoked"][1]["roles"] == ["Ops"]
    assert "user.reactivated" in found and "user.staff_revoked" in found


def test_saving_without_a_change_records_nothing(root: User) -> None:
    eve = make_staff("eve", "Ops")
    change_user(signed_in(root), eve)
    assert events_about(eve) == []


def test_own_page_shows_roles_and_flags_read_only(root: User) -> None:
    page = signed_in(root).get(reverse("admin:accounts_user_change", args=[root.pk]))
    form = page.context["adminform"].form
    assert not {"is_active", "is_staff", "is_superuser", "groups"} & set(form.fields)
    # Profile fields stay editable on one's own page.
    response = change_user(signed_in(root), root, first_name="Rooty")
    root.refresh_from_db()
    assert root.first_name == "Rooty" and response.status_code == 200
    assert not any("cannot" in m for m in page_messages(response))


def test_an_admin_sets_an_ops_password_and_the_chain_says_who(root: User) -> None:
    eve = make_staff("eve", "Ops")
    response = set_password_in_admin(signed_in(root), eve, CHOSEN)
    assert "Password changed." in page_messages(response)
    eve.refresh_from_db()
    assert eve.password_set_by == root and not eve.password_owner_only
    assert sign_in("eve", CHOSEN) is not None
    action, actor, data = events_about(eve)[-1]
    assert (action, actor, data["via"]) == ("user.password_set", root.pk, "admin form")


def test_nobody_else_sets_a_superusers_password(rita: User) -> None:
    ada = make_staff("ada", "Admin")
    boss = make_staff("boss", "Admin", superuser=True)
    response = set_password_in_admin(signed_in(ada), boss, CHOSEN)
    assert any("Only boss can choose the password" in m for m in page_messages(response))
    assert sign_in("boss", DEMO_PASSWORD) is not None
    # The password page itself is refused, not only the save.
    page = signed_in(ada).get(reverse("admin:auth_user_password_change", args=[rita.pk]))
    assert page.status_code == 302


def test_an_admin_sends_a_link_and_the_owner_chooses(root: User, rita: User) -> None:
    url = reverse("admin:accounts_user_send_password_link", args=[rita.pk])
    page = signed_in(root).get(reverse("admin:accounts_user_change", args=[rita.pk]))
    assert url in page.content.decode()
    response = signed_in(root).post(url, follow=True)
    assert "A link to choose a password was sent to rita@example.com." in page_messages(response)
    assert [message.to for message in mail.outbox] == [["rita@example.com"]]
    action, actor, data = events_about(rita)[-1]
    assert (action, actor, data["to"]) == ("user.password_link_sent", root.pk, "rita@example.com")
    # Rita's password is untouched until she uses the link.
    assert sign_in("rita", DEMO_PASSWORD) is not None


def test_no_link_for_an_audience_member(root: User, make_member: Callable[..., User]) -> None:
    member = make_member("ann@example.org")
    url = reverse("admin:accounts_user_send_password_link", args=[member.pk])
    response = signed_in(root).post(url, follow=True)
    assert any("not an active staff account" in m for m in page_messages(response))
    assert mail.outbox == []


def test_own_password_change_is_recorded_as_the_owners(olivia: User) -> None:
    client = signed_in(olivia)
    response = client.post(
        reverse("admin:password_change"),
        {
            "old_password": DEMO_PASSWORD,
            "new_password1": "Olivias-new-one-42",
            "new_password2": "Olivias-new-one-42",
        },
    )
    assert response.status_code == 302
    olivia.refresh_from_db()
    assert olivia.password_set_by == olivia
    action, actor, data = events_about(olivia)[-1]
    assert (action, actor, data["via"]) == ("user.password_changed", olivia.pk, "own change")
    # Still signed in: the session follows the new password.
    assert client.get(reverse("admin:index")).status_code == 200


def test_a_password_set_elsewhere_is_audited_and_no_longer_the_owners_alone(
    olivia: User,
) -> None:
    olivia.attribute_password(olivia, owner_only=True)
    olivia.save()
    olivia.set_password("From-a-shell-1234")
    olivia.save()
    olivia.refresh_from_db()
    assert olivia.password_set_by is None and not olivia.password_owner_only
    action, actor, data = events_about(olivia)[-1]
    assert (action, actor) == ("user.password_set", None)
    assert data["by"].startswith("unattributed")


def test_direct_grants_are_not_role_permissions(mallory: User) -> None:
    from django.contrib.auth.models import Permission

    mallory.user_permissions.add(Permission.objects.get(codename="approve_campaign"))
    mallory = User.objects.get(pk=mallory.pk)
    assert not mallory.has_role_perm("campaigns.approve_campaign")
    mallory.groups.add(Group.objects.get(name="Compliance"))
    mallory = User.objects.get(pk=mallory.pk)
    assert mallory.has_role_perm("campaigns.approve_campaign")


# --- The first accounts, from the command line -------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_staff_makes_the_first_compliance_member_with_a_link_not_a_password() -> None:
    output = run("create_staff", "carla", "carla@example.com", "--role", "Compliance")
    carla = User.objects.get(username="carla")
    assert carla.is_staff and not carla.has_usable_password()
    assert set(carla.groups.values_list("name", flat=True)) == {"Compliance"}
    assert "sent to carla@example.com" in output
    assert [message.to for message in mail.outbox] == [["carla@example.com"]]
    actions = [action for action, actor, _ in events_about(carla) if actor is None]
    assert actions == ["user.created", "user.password_link_sent"]
    assert events_about(carla)[0][2]["roles"] == ["Compliance"]


def test_create_staff_refuses_a_second_compliance_member(rita: User) -> None:
    with pytest.raises(CommandError, match="An active Compliance member exists"):
        run("create_staff", "carla", "carla@example.com", "--role", "Compliance")
    assert not User.objects.filter(username="carla").exists()
    # Other roles are fine: the first Admin, say.
    run("create_staff", "ada", "ada@example.com", "--role", "Admin")
    assert User.objects.get(username="ada").groups.get().name == "Admin"


def test_create_staff_refuses_a_bad_address_or_a_taken_name(olivia: User) -> None:
    with pytest.raises(CommandError, match="email"):
        run("create_staff", "x", "x@exa\u202emple.com", "--role", "Ops")
    with pytest.raises(CommandError, match="username"):
        run("create_staff", "olivia", "new@example.com", "--role", "Ops")


def test_send_password_link_command(olivia: User) -> None:
    assert "sent to olivia@example.com" in run("send_password_link", "olivia")
    with pytest.raises(CommandError, match="No account"):
        run("send_password_link", "nobody")


def test_account_pages_open_for_the_roles_that_use_them(root: User, rita: User) -> None:
    from accounts import services
    from accounts.models import RoleGrant

    eve = make_staff("eve", "Ops")
    grant = services.request_grant(eve, RoleGrant.Kind.COMPLIANCE, by=root)
    admin = signed_in(root)
    for url in (
        reverse("admin:index"),
        reverse("admin:accounts_user_changelist"),
        reverse("admin:accounts_user_add"),
        reverse("admin:accounts_user_change", args=[root.pk]),
        reverse("admin:accounts_user_change", args=[rita.pk]),
        reverse("admin:accounts_user_change", args=[eve.pk]),
        reverse("admin:auth_user_password_change", args=[eve.pk]),
        reverse("admin:accounts_rolegrant_changelist"),
        reverse("admin:accounts_rolegrant_change", args=[grant.pk]),
        reverse("admin:auth_group_changelist"),
        reverse("admin:password_change"),
    ):
        assert admin.get(url).status_code == 200, url
    page = admin.get(reverse("admin:accounts_user_change", args=[eve.pk])).content.decode()
    assert "Compliance role, asked by root" in page
    reviewer = signed_in(rita)
    assert "Role grants" in reviewer.get(reverse("admin:index")).content.decode()
    assert reviewer.get(reverse("admin:accounts_user_changelist")).status_code == 403


class BrokenTransport(BaseEmailBackend):
    def send_messages(self, email_messages: Any) -> int:
        raise OSError("connection refused")


def test_create_staff_says_how_to_go_on_when_mail_fails(settings: Any) -> None:
    settings.EMAIL_TRANSPORT = f"{__name__}.BrokenTransport"
    with pytest.raises(CommandError, match="manage.py send_password_link ada"):
        run("create_staff", "ada", "ada@example.com", "--role", "Admin")
    ada = User.objects.get(username="ada")
    assert not ada.has_usable_password()
    assert not AuditEvent.objects.filter(action="user.password_link_sent").exists()
