"""Login throttle: django-axes, tuned for Countersign, and every lockout in the audit chain.

After `AXES_FAILURE_LIMIT` wrong passwords for one account from one address, that pair
is locked out for `AXES_COOLOFF_TIME` (settings say why 5 and 15 minutes). The count is per
account, not per spelling: "olivia", "Olivia@Example.com" and "olivia@example.com" are one.
A success resets it. The lockout itself is an audit event, written once per lockout.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit.chain import record_audit

from .models import User

LOCKOUT_TEMPLATE = "admin/login_locked_out.html"


# axes ships no type hints, so its class is Any to mypy.
class LoginThrottleBackend(AxesStandaloneBackend):  # type: ignore[misc]
    """Axes' lockout check, for sign-ins that come from somewhere.

    `authenticate()` without a request (the shell, a script, the test client's `login()`)
    is not a sign-in from an address, so there is nothing to throttle; axes would raise.
    Every web sign-in (the admin's login form) passes its request.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        super().authenticate(request, username, password, **kwargs)
        return None


def throttle_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """The account a sign-in names, however it was spelled (AXES_USERNAME_CALLABLE).

    Staff sign in with the username or the email in any case; counting each spelling
    apart would give a guesser five tries per spelling. An identifier that names nobody
    is counted under its case-folded self.
    """
    raw = (credentials or {}).get("username")
    if raw is None:
        raw = request.POST.get("username")
    if raw is None:
        return None
    identifier = str(raw).strip()
    # The same lookup as the login's (CountersignUserManager.get_by_natural_key).
    username = (
        User.objects.filter(username=identifier).values_list("username", flat=True).first()
        or User.objects.filter(email__iexact=identifier).values_list("username", flat=True).first()
    )
    return username or identifier.casefold()[:255]


def client_ip(request: HttpRequest) -> str | None:
    """The address a sign-in came from (AXES_CLIENT_IP_CALLABLE).

    Behind the compose stack's proxy REMOTE_ADDR is the proxy, for everyone. With
    TRUST_X_FORWARDED_FOR the client is the last X-Forwarded-For entry, the one that
    proxy appended; entries left of it are whatever the client sent, so never those.
    """
    if settings.TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        candidate = forwarded.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    remote: str | None = request.META.get("REMOTE_ADDR")
    return remote


def cool_off_minutes() -> int:
    cool_off: timedelta = settings.AXES_COOLOFF_TIME
    return max(1, round(cool_off.total_seconds() / 60))


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """The admin's login page, saying that and for how long signing in is paused (429)."""
    message = (
        "Too many failed sign-ins for this account from your address: signing in is paused "
        f"for {cool_off_minutes()} minutes. Wait, then sign in with the right password. If "
        "these attempts were not yours, tell an administrator."
    )
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "app_path": request.get_full_path(),
        "form": AdminAuthenticationForm(request),
        "username": request.user.get_username() if hasattr(request, "user") else "",
        REDIRECT_FIELD_NAME: request.POST.get(REDIRECT_FIELD_NAME)
        or request.GET.get(REDIRECT_FIELD_NAME, ""),
        "lockout_message": message,
    }
    return render(request, LOCKOUT_TEMPLATE, context, status=429)  # Too Many Requests


def audit_lockout(
    sender: object,
    request: HttpRequest | None = None,
    username: str | None = None,
    ip_address: str | None = None,
    **kwargs: Any,
) -> None:
    """Record a lockout in the audit chain (connected to axes' `user_locked_out`).

    Axes sends the signal on the failure that locks the pair out, and again on every
    attempt refused while it is locked out. Only the first counted a failure
    (`axes_failures_since_start`); the refused ones are not news and would let anyone
    flood the chain with one event per request.
    """
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    user = User.objects.filter(username=username).first() if username else None
    record_audit(
        "login.locked_out",
        obj=user,
        data={
            "username": username,
            "ip_address": ip_address,
            "failures": failures,
            "cool_off_minutes": cool_off_minutes(),
        },
    )
