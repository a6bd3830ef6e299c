"""Admin login: staff by username or by email in any case; audience members never."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth import SESSION_KEY, authenticate
from django.test import Client
from django.urls import reverse

from accounts.models import User
from tests.conftest import DEMO_PASSWORD

pytestmark = pytest.mark.django_db


def admin_login(identifier: str, password: str) -> tuple[Client, int, str]:
    client = Client()
    response = client.post(
        reverse("admin:login"),
        {"username": identifier, "password": password, "next": reverse("admin:index")},
    )
    return client, response.status_code, response.headers.get("Location", "")


@pytest.mark.parametrize("identifier", ["olivia", "olivia@example.com", "OLIVIA@Example.COM"])
def test_staff_log_in_with_username_or_email_in_any_case(olivia: User, identifier: str) -> None:
    client, status, location = admin_login(identifier, DEMO_PASSWORD)

    assert (status, location) == (302, reverse("admin:index"))
    assert client.session[SESSION_KEY] == str(olivia.pk)
    assert client.get(reverse("admin:index")).status_code == 200


def test_wrong_password_is_refused(olivia: User) -> None:
    client, status, _ = admin_login("olivia@example.com", "not-the-password")
    assert status == 200
    assert SESSION_KEY not in client.session


def test_audience_member_cannot_log_in_even_with_a_password(
    make_member: Callable[..., User],
) -> None:
    member = make_member("member@example.org")
    member.set_password(DEMO_PASSWORD)
    member.save()

    for identifier in ("member@example.org", "MEMBER@example.org", member.username):
        client, status, _ = admin_login(identifier, DEMO_PASSWORD)
        assert status == 200
        assert SESSION_KEY not in client.session
    assert Client().get(reverse("admin:index")).status_code == 302


def test_imported_member_has_no_password_to_log_in_with(
    make_member: Callable[..., User],
) -> None:
    member = make_member("imported@example.org")

    assert not member.has_usable_password()
    assert authenticate(username="imported@example.org", password="") is None
    assert authenticate(username="imported@example.org", password=member.password) is None
