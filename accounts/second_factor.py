"""A second factor for the people who decide: TOTP (django-otp), with recovery codes.

When `SECOND_FACTOR_REQUIRED` is on (the default with DEBUG off; the demo runs with it off),
the decisions that matter most refuse a session that has not verified a second factor:
approve and reject, the emergency stop, and every change to a staff account. Approving
also needs a sign-in (or a re-authentication on the second-factor page: password and code)
younger than `APPROVAL_REAUTH_MINUTES`, so a session left open on a desk does not approve.

Pages stay readable without it: only unsafe requests (POST and the like) are refused, and
the refusal sends the person to the second-factor page, where they enrol (the first time)
or verify, and come back.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django_otp import DEVICE_ID_SESSION_KEY, verify_token
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.chain import record_audit

from .models import User

# The session key holding the Unix time of the last password check (sign-in or re-auth).
AUTHENTICATED_AT = "countersign_authenticated_at"
RECOVERY_CODES = 10
TOTP_NAME = "Authenticator app"
RECOVERY_NAME = "Recovery codes"

View = TypeVar("View", bound=Callable[..., HttpResponse])


def is_required() -> bool:
    return bool(getattr(settings, "SECOND_FACTOR_REQUIRED", False))


def reauth_window_seconds() -> int:
    return int(getattr(settings, "APPROVAL_REAUTH_MINUTES", 15)) * 60


def note_authentication(request: HttpRequest) -> None:
    request.session[AUTHENTICATED_AT] = time.time()


def _on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        note_authentication(request)


def connect_signals() -> None:
    user_logged_in.connect(_on_login, dispatch_uid="countersign-authenticated-at")


def is_verified(request: HttpRequest) -> bool:
    """Whether this session verified a second factor (django-otp's middleware says so)."""
    check = getattr(request.user, "is_verified", None)
    return bool(check is not None and check())


def authenticated_seconds_ago(request: HttpRequest) -> float | None:
    at = request.session.get(AUTHENTICATED_AT)
    return time.time() - float(at) if isinstance(at, int | float) else None


def refusal(request: HttpRequest, *, fresh: bool = False) -> str | None:
    """Why this session may not take a guarded decision now, or None if it may."""
    if not is_required():
        return None
    if not is_verified(request):
        return "This decision needs your second factor: verify it (or set it up) first."
    if fresh:
        age = authenticated_seconds_ago(request)
        if age is None or age > reauth_window_seconds():
            minutes = reauth_window_seconds() // 60
            return (
                f"Approving needs a sign-in younger than {minutes} minutes: confirm your "
                "password and code again."
            )
    return None


def page_url(next_url: str = "") -> str:
    url = reverse("second_factor")
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def _back_to(request: HttpRequest) -> str:
    referer = str(request.META.get("HTTP_REFERER", ""))
    if referer and url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return referer
    return reverse("admin:index")


def require_second_factor(*, fresh: bool = False) -> Callable[[View], View]:
    """Refuse unsafe requests from a session without a verified factor (or a fresh sign-in).

    A refused request changes nothing: it is sent to the second-factor page, which sends
    the person back to where they came from.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                why = refusal(request, fresh=fresh)
                if why is not None:
                    messages.error(request, why)
                    return HttpResponseRedirect(page_url(_back_to(request)))
            return view(request, *args, **kwargs)

        return cast(View, wrapped)

    return decorate


# --- Devices --------------------------------------------------------------------------------


def confirmed_totp(user: User) -> TOTPDevice | None:
    return cast(
        "TOTPDevice | None",
        TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first(),
    )


def pending_totp(user: User) -> TOTPDevice:
    """The device being enrolled: made once, kept until confirmed with a first code."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=TOTP_NAME, confirmed=False)
    return cast(TOTPDevice, device)


def new_recovery_codes(user: User) -> list[str]:
    """Replace the user's recovery codes; each works once.

    They are shown once, on the page that makes them. django-otp keeps them as they are, so
    its device admin (which would show them) is not registered.
    """
    device, _ = StaticDevice.objects.get_or_create(
        user=user, name=RECOVERY_NAME, defaults={"confirmed": True}
    )
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    return codes


def enrol(request: HttpRequest, user: User, code: str) -> list[str] | None:
    """Confirm the pending authenticator with its first code; return fresh recovery codes."""
    device = pending_totp(user)
    if not device.verify_token(code):
        return None
    with transaction.atomic():
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = new_recovery_codes(user)
        record_audit("second_factor.enrolled", actor=user, obj=user, data={"device": device.name})
    otp_login(request, device)
    note_authentication(request)
    return codes


def verify(request: HttpRequest, user: User, code: str) -> bool:
    """Check a code from the authenticator or a recovery code; mark the session verified."""
    for model in (TOTPDevice, StaticDevice):
        for device in model.objects.filter(user=user, confirmed=True).order_by("pk"):
            matched = verify_token(user, device.persistent_id, code.strip())
            if matched is not None:
                if isinstance(matched, StaticDevice):
                    record_audit(
                        "second_factor.recovery_code_used",
                        actor=user,
                        obj=user,
                        data={"left": matched.token_set.count()},
                    )
                otp_login(request, matched)
                note_authentication(request)
                return True
    return False


def forget_verification(request: HttpRequest) -> None:
    request.session.pop(DEVICE_ID_SESSION_KEY, None)
