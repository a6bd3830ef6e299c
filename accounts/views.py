"""The two pages where people choose their own password: from a link, and when signed in.

Both record the change through `accounts.services.save_password`, as the owner's.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.views import (
    INTERNAL_RESET_SESSION_TOKEN,
    PasswordChangeView,
    PasswordResetConfirmView,
)
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse, reverse_lazy

from . import services
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
