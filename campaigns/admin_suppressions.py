"""Suppression list in the admin: list, search, add manual entries, remove with a reason.

Registered by campaigns/admin.py (`admin.site.register(Suppression, SuppressionAdmin)`).
Rows are never edited, and Django's delete action and delete view are off: removing a
suppression may send mail to someone who complained, so it goes through the `remove/`
view, which asks for a reason and writes it to the audit chain.

Permissions come from the user's roles (`User.has_role_perm`), never from superuser
status alone: Admin may view, add and remove; Compliance may view.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from accounts.models import User
from accounts.validators import normalize_address, single_address_error

from .models import Suppression
from .suppressions import add_suppression, remove_suppression

VIEW_PERM = "campaigns.view_suppression"
ADD_PERM = "campaigns.add_suppression"
REMOVE_PERM = "campaigns.delete_suppression"


def _has_role_perm(request: HttpRequest, perm: str) -> bool:
    user = request.user
    return isinstance(user, User) and user.is_active and user.is_staff and user.has_role_perm(perm)


class SuppressionAddForm(forms.ModelForm[Suppression]):
    note = forms.CharField(
        required=False,
        max_length=150,
        help_text="Optional: why, e.g. a support ticket number. Stored as the source.",
    )

    class Meta:
        model = Suppression
        fields = ["address"]
        help_texts = {"address": "One address. It will receive no campaign of any category."}

    def clean_address(self) -> str:
        value = self.cleaned_data.get("address", "")
        error = single_address_error(value)
        if error is not None:
            raise forms.ValidationError(f"This address {error}.")
        address = normalize_address(value)
        existing = Suppression.objects.filter(address=address).first()
        # An unsubscribe only silences announcements, so a manual entry may replace it.
        if existing is not None and existing.reason != Suppression.Reason.UNSUBSCRIBED:
            raise forms.ValidationError(
                f"This address is already suppressed ({existing.get_reason_display().lower()})."
            )
        return address

    def validate_unique(self) -> None:
        # add_suppression owns uniqueness (it upgrades an unsubscribed row in place).
        pass


class RemovalForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=1000,
        help_text="Required. Recorded in the audit log with the removed entry.",
    )

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Give a reason.")
        return reason


class SuppressionAdmin(admin.ModelAdmin[Suppression]):
    list_display = ("address", "reason", "source", "created_at", "created_by")
    list_filter = ("reason",)
    search_fields = ("address", "source")
    list_select_related = ("created_by",)
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    detail_fields = ("address", "reason", "source", "created_at", "created_by")
    # No bulk actions: the only bulk action Django offers here is delete.
    actions = None

    # --- permissions (roles, not superuser status) -----------------------------------------

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _has_role_perm(request, VIEW_PERM)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return _has_role_perm(request, ADD_PERM)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Disables the delete view and action; removal is `remove_view`, with a reason.
        return False

    def can_remove(self, request: HttpRequest) -> bool:
        return _has_role_perm(request, REMOVE_PERM)

    # --- forms ------------------------------------------------------------------------------

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("address", "note")
        return self.detail_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else self.detail_fields

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = SuppressionAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Suppression, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied  # has_change_permission is False; never reached
        assert isinstance(request.user, User)
        note = form.cleaned_data.get("note", "").strip()
        saved = add_suppression(
            obj.address,
            Suppression.Reason.MANUAL,
            source=f"admin: {note}" if note else "admin",
            by=request.user,
        )
        if saved is None:
            # Someone suppressed it more strongly between the form check and now.
            saved = Suppression.objects.get(address=normalize_address(obj.address))
        # The admin's redirect and log entry need the stored row.
        obj.pk = saved.pk
        obj.refresh_from_db()

    # --- the list -----------------------------------------------------------------------------

    def get_list_display(self, request: HttpRequest) -> Any:
        if self.can_remove(request):
            return (*self.list_display, "remove_link")
        return self.list_display

    @admin.display(description="")
    def remove_link(self, obj: Suppression) -> str:
        url = reverse("admin:campaigns_suppression_remove", args=[obj.pk])
        return format_html('<a href="{}">Remove…</a>', url)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Suppression]:
        return super().get_queryset(request).select_related("created_by")

    # --- removal with a reason -------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults, whose "<path:object_id>/" would swallow "<id>/remove/".
        return [
            path(
                "<path:object_id>/remove/",
                self.admin_site.admin_view(self.remove_view),
                name="campaigns_suppression_remove",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_remove": self.can_remove(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def remove_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # admin_view wrapped this in csrf_protect and the staff login check.
        if not self.can_remove(request):
            raise PermissionDenied
        suppression = self.get_object(request, unquote(object_id))
        if suppression is None:
            raise Http404("No such suppression.")
        if request.method == "POST":
            form = RemovalForm(request.POST)
            if form.is_valid():
                assert isinstance(request.user, User)
                remove_suppression(suppression, by=request.user, reason=form.cleaned_data["reason"])
                self.message_user(
                    request,
                    f"Removed the suppression of {suppression.address}.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:campaigns_suppression_changelist"))
            status = 400
        elif request.method == "GET":
            form = RemovalForm()
            status = 200
        else:
            return HttpResponse(status=405, headers={"Allow": "GET, POST"})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Remove the suppression of {suppression.address}",
            "object": suppression,
            "form": form,
        }
        return TemplateResponse(
            request, "admin/campaigns/suppression/remove.html", context, status=status
        )
