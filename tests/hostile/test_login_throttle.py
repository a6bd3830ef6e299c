"""Issue 8, point 6: there was no login throttle.

30 wrong passwords, then the right one, logged in. Now five failures for one account from
one address lock that pair out for 15 minutes: the right password is refused meanwhile,
with a page that says so, and works again after the cool-off. The lockout is audited.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import SESSION_KEY
from django.db.models import F
from django.test import Client
from django.urls import reverse

from accounts.models import User
from audit.chain import first_broken_link
from audit.models import AuditEvent
from tests.conftest import DEMO_PASSWORD

pytestmark = pytest.mark.django_db

ATTACKER = "203.0.113.7"  # documentation addresses (RFC 5737): only ever strings here
REVIEWER_DESK = "198.51.100.20"


def sign_in(client: Client, identifier: str, password: str, address: str = ATTACKER) -> int:
    response = client.post(
        reverse("admin:login"),
        {"username": identifier, "password": password, "next": reverse("admin:index")},
        REMOTE_ADDR=address,
    )
    return response.status_code


def signed_in(client: Client) -> bool:
    return SESSION_KEY in client.session


def clock_moves_on(minutes: int) -> None:
    # As if the failures had happened `minutes` earlier: the throttle reads their times.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=minutes))


def test_thirty_wrong_passwords_then_the_right_one_does_not_sign_in(rita: User) -> None:
    client = Client()
    statuses = [sign_in(client, "rita", f"guess-{i}") for i in range(30)]

    status = sign_in(client, "rita", DEMO_PASSWORD)

    assert statuses[:4] == [200] * 4  # the login form again, "wrong password"
    assert set(statuses[4:]) == {429}  # the fifth failure locks the pair out
    assert status == 429
    assert not signed_in(client)
    rita.refresh_from_db()
    assert rita.last_login is None


def test_the_lockout_page_says_why_and_for_how_long(rita: User) -> None:
    client = Client()
    for i in range(5):
        sign_in(client, "rita", f"guess-{i}")

    response = client.post(
        reverse("admin:login"),
        {"username": "rita", "password": DEMO_PASSWORD},
        REMOTE_ADDR=ATTACKER,
    )

    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed sign-ins for this account from your address" in page
    assert "paused for 15 minutes" in page
    assert 'id="login-form"' in page and "Countersign" in page  # the admin's own login page


def test_every_spelling_of_the_account_counts_toward_one_lockout(rita: User) -> None:
    client = Client()
    for identifier in ["rita", "RITA@example.com", "rita@example.com", " rita", "Rita@Example.com"]:
        sign_in(client, identifier, "wrong")

    assert sign_in(client, "rita@example.com", DEMO_PASSWORD) == 429
    assert not signed_in(client)


def test_after_the_cool_off_the_right_password_signs_in_and_the_count_starts_over(
    rita: User,
) -> None:
    client = Client()
    for i in range(30):
        sign_in(client, "rita", f"guess-{i}")

    clock_moves_on(14)
    assert sign_in(client, "rita", DEMO_PASSWORD) == 429  # still within the cool-off
    clock_moves_on(2)
    assert sign_in(client, "rita", DEMO_PASSWORD) == 302

    assert signed_in(client)
    assert not AccessAttempt.objects.exists()  # a success resets the count


def test_retrying_during_the_lockout_does_not_extend_it(rita: User) -> None:
    client = Client()
    for i in range(5):
        sign_in(client, "rita", f"guess-{i}")
    clock_moves_on(10)
    for i in range(10):
        assert sign_in(client, "rita", f"still-wrong-{i}") == 429

    clock_moves_on(6)

    assert sign_in(client, "rita", DEMO_PASSWORD) == 302


def test_a_reviewer_who_mistypes_a_few_times_signs_in(rita: User) -> None:
    for _ in range(3):
        client = Client()
        for i in range(4):
            assert sign_in(client, "rita", f"typo-{i}", REVIEWER_DESK) == 200

        assert sign_in(client, "rita", DEMO_PASSWORD, REVIEWER_DESK) == 302
        assert signed_in(client)


def test_a_lockout_from_one_address_leaves_the_reviewer_at_another_free(rita: User) -> None:
    attacker = Client()
    for i in range(30):
        sign_in(attacker, "rita", f"guess-{i}")

    reviewer = Client()
    assert sign_in(reviewer, "rita", DEMO_PASSWORD, REVIEWER_DESK) == 302
    assert signed_in(reviewer)
    assert sign_in(attacker, "rita", DEMO_PASSWORD) == 429


def test_a_forged_forwarded_for_header_does_not_escape_the_lockout(rita: User) -> None:
    client = Client()
    for i in range(5):
        sign_in(client, "rita", f"guess-{i}")

    # Not behind a trusted proxy: X-Forwarded-For is whatever the client wrote.
    response = client.post(
        reverse("admin:login"),
        {"username": "rita", "password": DEMO_PASSWORD},
        REMOTE_ADDR=ATTACKER,
        HTTP_X_FORWARDED_FOR=REVIEWER_DESK,
    )

    assert response.status_code == 429 and not signed_in(client)


def test_behind_the_trusted_proxy_the_client_is_the_address_it_appended(
    rita: User, settings: object
) -> None:
    settings.TRUST_X_FORWARDED_FOR = True  # type: ignore[attr-defined]
    proxy = "192.0.2.1"
    client = Client()
    for i in range(5):
        client.post(
            reverse("admin:login"),
            {"username": "rita", "password": f"guess-{i}"},
            REMOTE_ADDR=proxy,
            # The attacker prepends a fake entry; the proxy appends the real one.
            HTTP_X_FORWARDED_FOR=f"{REVIEWER_DESK}, {ATTACKER}",
        )

    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == [ATTACKER]
    reviewer = client.post(
        reverse("admin:login"),
        {"username": "rita", "password": DEMO_PASSWORD},
        REMOTE_ADDR=proxy,
        HTTP_X_FORWARDED_FOR=REVIEWER_DESK,
    )
    assert reviewer.status_code == 302


def test_the_lockout_is_recorded_once_in_the_audit_chain(rita: User) -> None:
    client = Client()
    for i in range(30):
        sign_in(client, "RITA@example.com", f"guess-{i}")
    sign_in(client, "rita", DEMO_PASSWORD)

    (event,) = AuditEvent.objects.filter(action="login.locked_out")
    assert (event.object_type, event.object_id) == ("accounts.user", str(rita.pk))
    assert event.actor_id is None  # whoever typed the passwords is not known to be Rita
    assert event.data == {
        "username": "rita",
        "ip_address": ATTACKER,
        "failures": 5,
        "cool_off_minutes": 15,
    }
    assert first_broken_link() is None


def test_a_lockout_of_a_name_nobody_has_is_audited_without_an_account() -> None:
    client = Client()
    for i in range(5):
        sign_in(client, "Nobody@Example.org", f"guess-{i}")

    (event,) = AuditEvent.objects.filter(action="login.locked_out")
    assert event.object_type == "" and event.data["username"] == "nobody@example.org"
