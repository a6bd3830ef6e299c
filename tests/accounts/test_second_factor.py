"""The second factor: who decides must have verified it, and approving needs a fresh sign-in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services as account_services
from accounts.models import RoleGrant, User
from accounts.second_factor import AUTHENTICATED_AT
from audit.models import AuditEvent
from campaigns import services
from campaigns.models import Approval, Campaign, SendingSwitch
from tests.conftest import DEMO_PASSWORD, make_staff
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

SECOND_FACTOR_PAGE = reverse("second_factor")


@pytest.fixture(autouse=True)
def _required(settings: Any) -> None:
    settings.SECOND_FACTOR_REQUIRED = True
    settings.APPROVAL_REAUTH_MINUTES = 15


@pytest.fixture
def in_review(olivia: User, make_member: Callable[..., User]) -> Campaign:
    make_member("ann@example.org", first_name="Ann")
    return services.submit_for_review(make_campaign(olivia), by=olivia)


def device_for(user: User) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="phone", confirmed=True)


def client_for(user: User, *, verified: bool, signed_in_ago: float = 0.0) -> Client:
    client = Client()
    assert client.login(username=user.username, password=DEMO_PASSWORD)
    session = client.session
    if verified:
        session[DEVICE_ID_SESSION_KEY] = device_for(user).persistent_id
    session[AUTHENTICATED_AT] = time.time() - signed_in_ago
    session.save()
    return client


def decide(client: Client, campaign: Campaign, action: str) -> Any:
    return client.post(
        reverse(f"admin:campaigns_campaign_{action}", args=[campaign.pk]),
        {"digest": campaign.frozen_digest, "comment": "looked at it"},
        HTTP_REFERER=f"http://testserver/admin/campaigns/campaign/{campaign.pk}/review/",
    )


def refused_to_second_factor(response: Any) -> bool:
    return bool(response.status_code == 302 and response["Location"].startswith(SECOND_FACTOR_PAGE))


# --- Approve and reject -------------------------------------------------------------------------


def test_approve_refuses_a_session_without_a_verified_second_factor(
    in_review: Campaign, rita: User
) -> None:
    response = decide(client_for(rita, verified=False), in_review, "approve")
    assert refused_to_second_factor(response)
    in_review.refresh_from_db()
    assert in_review.status == Campaign.Status.IN_REVIEW
    assert not Approval.objects.exists()


def test_approve_refuses_a_verified_session_whose_sign_in_is_stale(
    in_review: Campaign, rita: User
) -> None:
    client = client_for(rita, verified=True, signed_in_ago=16 * 60)
    response = decide(client, in_review, "approve")
    assert refused_to_second_factor(response)
    in_review.refresh_from_db()
    assert in_review.status == Campaign.Status.IN_REVIEW
    page = client.get(response["Location"])
    assert "younger than 15 minutes" in page.content.decode()


def test_approve_goes_through_with_a_verified_factor_and_a_fresh_sign_in(
    in_review: Campaign, rita: User
) -> None:
    response = decide(client_for(rita, verified=True, signed_in_ago=60), in_review, "approve")
    assert not refused_to_second_factor(response)
    assert Approval.objects.filter(campaign=in_review, decision="approved").count() == 1


def test_the_window_is_a_setting(in_review: Campaign, rita: User, settings: Any) -> None:
    settings.APPROVAL_REAUTH_MINUTES = 60
    client = client_for(rita, verified=True, signed_in_ago=30 * 60)
    assert not refused_to_second_factor(decide(client, in_review, "approve"))
    assert Approval.objects.filter(campaign=in_review).exists()


def test_reject_refuses_without_a_verified_factor_but_not_for_an_old_sign_in(
    in_review: Campaign, rita: User
) -> None:
    assert refused_to_second_factor(decide(client_for(rita, verified=False), in_review, "reject"))
    assert not Approval.objects.exists()
    stale_but_verified = client_for(rita, verified=True, signed_in_ago=3 * 3600)
    assert not refused_to_second_factor(decide(stale_but_verified, in_review, "reject"))
    assert Approval.objects.filter(decision="rejected").count() == 1


# --- The emergency stop ----------------------------------------------------------------------


def test_emergency_stop_refuses_without_a_verified_factor_and_still_shows_its_page(
    rita: User,
) -> None:
    url = reverse("campaigns_emergency_stop")
    client = client_for(rita, verified=False)
    assert client.get(url).status_code == 200
    response = client.post(url, {"action": "halt", "reason": "drill"}, HTTP_REFERER=url)
    assert refused_to_second_factor(response)
    assert not SendingSwitch.is_halted()
    assert not refused_to_second_factor(
        client_for(rita, verified=True).post(url, {"action": "halt", "reason": "drill"})
    )
    assert SendingSwitch.is_halted()


# --- Staff-account changes -------------------------------------------------------------------


def test_staff_account_changes_refuse_without_a_verified_factor(root: User, rita: User) -> None:
    sam = make_staff("sam", "Ops")
    client = client_for(root, verified=False)
    added = client.post(
        reverse("admin:accounts_user_add"),
        {"username": "eve", "email": "eve@example.com", "usable_password": "false"},
    )
    assert refused_to_second_factor(added)
    assert not User.objects.filter(username="eve").exists()
    changed = client.post(
        reverse("admin:accounts_user_change", args=[sam.pk]),
        {"username": "sam", "email": "evil@example.com"},
    )
    assert refused_to_second_factor(changed)
    link = client.post(reverse("admin:accounts_user_send_password_link", args=[sam.pk]))
    assert refused_to_second_factor(link)
    password = client.post(
        reverse("admin:auth_user_password_change", args=[sam.pk]),
        {"usable_password": "true", "password1": "x" * 20, "password2": "x" * 20},
    )
    assert refused_to_second_factor(password)
    deleted = client.post(reverse("admin:accounts_user_delete", args=[sam.pk]), {"post": "yes"})
    assert refused_to_second_factor(deleted)
    sam.refresh_from_db()
    assert sam.email == "sam@example.com" and sam.check_password(DEMO_PASSWORD)
    # The pages still open: reading is not a change.
    assert client.get(reverse("admin:accounts_user_change", args=[sam.pk])).status_code == 200


def test_a_role_grant_decision_refuses_without_a_verified_factor(root: User, rita: User) -> None:
    sam = make_staff("sam", "Ops")
    account_services.update_account(sam, by=root, roles=["Ops", "Compliance"])
    grant = RoleGrant.objects.get(user=sam)
    url = reverse("admin:accounts_rolegrant_decide", args=[grant.pk])
    assert refused_to_second_factor(client_for(rita, verified=False).post(url, {"confirm": "1"}))
    grant.refresh_from_db()
    assert grant.outcome == RoleGrant.Outcome.PENDING and grant.decided_by is None


# --- Enrolment, verification, recovery codes --------------------------------------------------


def test_enrolment_in_the_admin_then_approval(in_review: Campaign, rita: User) -> None:
    client = client_for(rita, verified=False)
    page = client.get(SECOND_FACTOR_PAGE)
    assert page.status_code == 200 and page.context["secret"]
    device = TOTPDevice.objects.get(user=rita, confirmed=False)
    wrong = client.post(SECOND_FACTOR_PAGE, {"password": "nope", "code": str(totp(device.bin_key))})
    assert "password is not right" in wrong.content.decode()
    code = str(totp(device.bin_key)).zfill(6)
    enrolled = client.post(SECOND_FACTOR_PAGE, {"password": DEMO_PASSWORD, "code": code})
    codes = enrolled.context["codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    device.refresh_from_db()
    assert device.confirmed
    assert AuditEvent.objects.filter(action="second_factor.enrolled", actor_id=rita.pk).exists()
    assert not refused_to_second_factor(decide(client, in_review, "approve"))
    assert Approval.objects.filter(campaign=in_review).exists()


def test_a_recovery_code_verifies_once_and_its_use_is_audited(rita: User) -> None:
    client = client_for(rita, verified=False)
    device = TOTPDevice.objects.get_or_create(user=rita, confirmed=False, name="phone")[0]
    code = str(totp(device.bin_key)).zfill(6)
    codes = client.post(SECOND_FACTOR_PAGE, {"password": DEMO_PASSWORD, "code": code}).context[
        "codes"
    ]
    later = client_for(rita, verified=False)
    response = later.post(SECOND_FACTOR_PAGE, {"password": DEMO_PASSWORD, "code": codes[0]})
    assert response.status_code == 302
    assert later.session.get(DEVICE_ID_SESSION_KEY)
    again = client_for(rita, verified=False)
    reused = again.post(SECOND_FACTOR_PAGE, {"password": DEMO_PASSWORD, "code": codes[0]})
    assert "not right" in reused.content.decode()
    assert not again.session.get(DEVICE_ID_SESSION_KEY)
    assert AuditEvent.objects.filter(action="second_factor.recovery_code_used").count() == 1


def test_a_wrong_password_on_the_second_factor_page_does_not_refresh_the_sign_in(
    in_review: Campaign, rita: User
) -> None:
    client = client_for(rita, verified=True, signed_in_ago=20 * 60)
    device = TOTPDevice.objects.get(user=rita)
    client.post(
        SECOND_FACTOR_PAGE, {"password": "wrong", "code": str(totp(device.bin_key)).zfill(6)}
    )
    assert refused_to_second_factor(decide(client, in_review, "approve"))


def test_the_device_admin_is_not_on_the_site(root: User) -> None:
    response = client_for(root, verified=False).get("/admin/otp_totp/totpdevice/")
    assert response.status_code == 404


# --- Off in the demo, on in production ----------------------------------------------------------


def _setting_with(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECOND_FACTOR_REQUIRED", "DEBUG")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; "
            "from django.conf import settings; print(settings.SECOND_FACTOR_REQUIRED)",
        ],
        env={**clean, "SECRET_KEY": "x" * 50, **env},
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


def test_on_by_default_with_production_settings_and_off_in_the_demo() -> None:
    assert _setting_with({}) == "True"
    assert _setting_with({"DEBUG": "true"}) == "False"


def test_with_the_setting_off_nobody_needs_a_device(
    in_review: Campaign, rita: User, settings: Any
) -> None:
    settings.SECOND_FACTOR_REQUIRED = False
    response = decide(
        client_for(rita, verified=False, signed_in_ago=10 * 3600), in_review, "approve"
    )
    assert not refused_to_second_factor(response)
    assert Approval.objects.filter(campaign=in_review).exists()


def test_every_admin_page_links_to_the_second_factor_page(rita: User) -> None:
    page = client_for(rita, verified=False).get(reverse("admin:index"))
    assert f'href="{SECOND_FACTOR_PAGE}"' in page.content.decode()
