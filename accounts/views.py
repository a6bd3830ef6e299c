"""The two pages where people choose their own password: from a link, and when signed in.

Both record the change through `accounts.services.save_password`, as the owner's.
"""

from __future__ import annotations

import base64
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import authenticate, update_session_auth_hash
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.views import (
    INTERNAL_RESET_SESSION_TOKEN,
    PasswordChangeView,
    PasswordResetConfirmView,
)
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme

from audit.chain import record_audit

from . import second_factor, services
from .models import User


class PasswordLinkView(PasswordResetConfirmView):
    """Where a link from `services.send_password_link` leads: the owner sets a password.

    Whoever follows the link has read the account's mailbox; a password set here is the
    only kind that counts as known to the owner alone.
    """

    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("admin:login")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**admin.site.each_context(self.request), **super().get_context_data(**kwargs)}

    def form_valid(self, form: SetPasswordForm) -> HttpResponse:  # type: ignore[type-arg]
        user = form.save(commit=False)
        assert isinstance(user, User)
        services.save_password(user, by=user, via="link")
        del self.request.session[INTERNAL_RESET_SESSION_TOKEN]
        messages.success(self.request, "Your password is set. Sign in with it.")
        return HttpResponseRedirect(self.get_success_url())


class OwnPasswordChangeView(PasswordChangeView):
    """The admin's "Change password", recorded as the owner's own change."""

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.save(commit=False)
        assert isinstance(user, User)
        services.save_password(user, by=user, via="own change")
        update_session_auth_hash(self.request, user)
        return HttpResponseRedirect(self.get_success_url())


def own_password_change(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
    """AdminSite.password_change with the attributed view (same form, template and URLs)."""
    site = admin.site
    request.current_app = site.name
    return OwnPasswordChangeView.as_view(
        form_class=AdminPasswordChangeForm,
        success_url=reverse("admin:password_change_done", current_app=site.name),
        extra_context={**site.each_context(request), **(extra_context or {})},
    )(request)


def second_factor_page(request: HttpRequest, site_context: dict[str, Any]) -> HttpResponse:
    """Enrol an authenticator (the first time) or verify the second factor and re-authenticate.

    Both take the password as well as a code: the page doubles as the re-authentication
    that approving needs (`APPROVAL_REAUTH_MINUTES`). Wrong passwords count towards the
    login throttle, like the login page's.
    """
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = ""
    enrolled = second_factor.confirmed_totp(user) is not None
    codes: list[str] | None = None
    if request.method == "POST":
        action = request.POST.get("action", "")
        if action == "recovery_codes":
            if not second_factor.is_verified(request):
                raise PermissionDenied("Verify your second factor before making new codes.")
            codes = second_factor.new_recovery_codes(user)
            record_audit("second_factor.recovery_codes_renewed", actor=user, obj=user)
        else:
            password_ok = (
                authenticate(
                    request, username=user.username, password=request.POST.get("password", "")
                )
                is not None
            )
            code = request.POST.get("code", "").strip()
            if not password_ok:
                messages.error(request, "That password is not right.")
            elif not enrolled:
                codes = second_factor.enrol(request, user, code)
                if codes is None:
                    messages.error(request, "That code does not match: check the app's clock.")
                else:
                    enrolled = True
            elif second_factor.verify(request, user, code):
                messages.success(request, "Second factor verified.")
                return HttpResponseRedirect(next_url or reverse("admin:index"))
            else:
                messages.error(request, "That code is not right (or was used already).")
    context: dict[str, Any] = {
        **site_context,
        "title": "Second factor",
        "enrolled": enrolled,
        "verified": second_factor.is_verified(request),
        "required": second_factor.is_required(),
        "codes": codes,
        "next": next_url,
        "window_minutes": second_factor.reauth_window_seconds() // 60,
    }
    if not enrolled:
        device = second_factor.pending_totp(user)
        context["secret"] = base64.b32encode(device.bin_key).decode("ascii")
        context["config_url"] = device.config_url
    return TemplateResponse(request, "admin/second_factor.html", context)
