"""User administration, role grants, the read-only roles, and the CSV import flow.

The rules about accounts live in `accounts.services`; this module turns the admin's
forms into calls to it. What an Admin may do here is what their role grants, never what
`is_superuser` would (`RoleAdmin`).
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from . import services
from .forms import (
    SELF_LOCKED_FIELDS,
    ImportConfirmForm,
    ImportUploadForm,
    UserChangeForm,
    UserCreationForm,
)
from .importer import ImportFileError, ImportReport, import_users_csv
from .models import RoleGrant, User
from .role_admin import ReadOnlyAdmin, RoleAdmin
from .roles import COMPLIANCE
from .second_factor import require_second_factor
from .views import PasswordLinkView, own_password_change

IMPORT_TOKEN_SALT = "accounts.admin.import-users"
# How long a dry-run report may be confirmed; uploads older than this are deleted.
IMPORT_MAX_AGE_SECONDS = 6 * 3600
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
_STORED_NAME = re.compile(r"[0-9a-f]{32}\.csv")


class InvalidImportToken(Exception):
    pass


def imports_dir() -> Path:
    return Path(settings.VAR_DIR) / "imports"


def can_import_users(request: HttpRequest) -> bool:
    user = request.user
    return (
        isinstance(user, User)
        and user.is_active
        and user.is_staff
        and user.has_role_perm("accounts.add_user")
    )


def store_upload(upload: UploadedFile) -> Path:
    """Copy the upload under a random name in the imports folder (never the client's name)."""
    folder = imports_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_uploads(folder)
    target = folder / f"{secrets.token_hex(16)}.csv"
    written = 0
    with target.open("xb") as out:
        for chunk in upload.chunks():
            written += len(chunk)
            if written > MAX_UPLOAD_BYTES:
                break
            out.write(chunk)
    if written > MAX_UPLOAD_BYTES:
        target.unlink()
        raise ImportFileError(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
    return target


def _remove_stale_uploads(folder: Path) -> None:
    cutoff = time.time() - IMPORT_MAX_AGE_SECONDS
    for old in folder.glob("*.csv"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:
            pass  # another request cleaned it up first


def make_import_token(stored: Path, *, user: User, source: str) -> str:
    return signing.dumps(
        {"file": stored.name, "user": user.pk, "source": source}, salt=IMPORT_TOKEN_SALT
    )


def resolve_import_token(token: str, *, user: User) -> tuple[Path, str]:
    """The stored file and original name a token names; InvalidImportToken otherwise."""
    try:
        data = signing.loads(token, salt=IMPORT_TOKEN_SALT, max_age=IMPORT_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise InvalidImportToken("This report has expired. Upload the file again.") from None
    except signing.BadSignature:
        raise InvalidImportToken("This confirmation is not valid.") from None
    if not isinstance(data, dict) or data.get("user") != user.pk:
        # A token is good only for the person who saw the dry-run report.
        raise InvalidImportToken("This confirmation is not valid.")
    name = data.get("file")
    folder = imports_dir().resolve()
    if not isinstance(name, str) or not _STORED_NAME.fullmatch(name):
        raise InvalidImportToken("This confirmation does not name an uploaded file.")
    stored = (folder / name).resolve()
    if stored.parent != folder:
        raise InvalidImportToken("This confirmation does not name an uploaded file.")
    if not stored.is_file():
        raise InvalidImportToken(
            "This upload was already imported or has expired. Upload the file again."
        )
    source = data.get("source")
    return stored, source if isinstance(source, str) else name


def _editor(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied
    return user


@admin.register(User)
class UserAdmin(RoleAdmin, DjangoUserAdmin[User]):
    """Accounts: permissions from roles; every save goes through `accounts.services`."""

    form = UserChangeForm
    add_form = UserCreationForm
    change_form_template = "admin/accounts/user/change_form.html"
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "locale",
        "is_staff",
        "is_active",
        "group_names",
    )
    list_filter = ("is_staff", "is_active", "groups", "locale")
    search_fields = ("email", "username", "first_name", "last_name")
    ordering = ("username",)
    # Roles are ticked as checkboxes; permissions one by one are not offered (and would
    # count for nothing: roles come from groups alone).
    filter_horizontal = ()
    fieldsets = (
        (None, {"fields": ("username", "password", "password_origin")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email", "time_zone")}),
        ("Audience", {"fields": ("locale", "attributes", "seed_addresses")}),
        (
            "Permissions",
            {
                "fields": ("is_active", "is_staff", "is_superuser", "groups", "pending_grants"),
                "description": (
                    "Ticking Compliance or superuser asks for a grant: it takes effect when "
                    "another Compliance member confirms it (Accounts › Role grants). Nobody "
                    "changes their own roles, superuser, staff or active status."
                ),
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "email", "usable_password", "password1", "password2"),
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="groups")
    def group_names(self, obj: User) -> str:
        return ", ".join(group.name for group in obj.groups.all())

    @admin.display(description="password chosen by")
    def password_origin(self, obj: User) -> str:
        if not obj.has_usable_password():
            return "nobody yet (no usable password)"
        if obj.password_set_by_id == obj.pk:
            origin = "the owner" + (" alone" if obj.password_owner_only else "")
        elif obj.password_set_by is not None:
            origin = str(obj.password_set_by)
        else:
            origin = "unknown (set before this was recorded, or from the command line)"
        when = f", {obj.password_set_at:%Y-%m-%d %H:%M}" if obj.password_set_at else ""
        return origin + when

    @admin.display(description="pending grants")
    def pending_grants(self, obj: User) -> str:
        pending = obj.role_grants.filter(outcome=RoleGrant.Outcome.PENDING).select_related(
            "requested_by"
        )
        return (
            "; ".join(
                f"{grant.get_kind_display()}, asked by {grant.requested_by}" for grant in pending
            )
            or "none"
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = ["password_origin", "pending_grants"]
        if obj is None:
            return readonly
        if obj.pk == request.user.pk:
            readonly += SELF_LOCKED_FIELDS
        elif obj.is_protected_account():
            # A link to choose a password goes to this address: only the owner changes it.
            readonly.append("email")
        return readonly

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None:
            return form
        # A class of its own per request (the factory makes a new one each call).
        return type(form.__name__, (form,), {"editor": _editor(request)})

    def formfield_for_manytomany(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelMultipleChoiceField[Any] | None:
        if db_field.name == "groups":
            kwargs["widget"] = forms.CheckboxSelectMultiple
            kwargs["help_text"] = (
                f"Roles. {COMPLIANCE} takes effect only when another Compliance member confirms it."
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "is_superuser" and field is not None:
            field.help_text = (
                "Django admin powers (no Countersign role). Ticking it asks for a grant that "
                "another Compliance member must confirm."
            )
        return field

    def save_model(
        self, request: HttpRequest, obj: User, form: ModelForm[User], change: bool
    ) -> None:
        editor = _editor(request)
        try:
            if not change:
                services.create_account(obj, by=editor, source="admin")
                return
            roles = None
            if "groups" in form.fields:
                roles = [group.name for group in form.cleaned_data.get("groups", [])]
            outcome = services.update_account(obj, by=editor, roles=roles)
        except services.AccountRefused as exc:
            # The form refuses these in words; reaching here means a crafted or racing
            # request. Refuse it whole: the admin's transaction rolls back.
            raise PermissionDenied(str(exc)) from exc
        for grant in outcome.requested:
            messages.warning(
                request,
                f"{grant.get_kind_display()} for {obj} is waiting: it takes effect when "
                "another Compliance member confirms it under Accounts › Role grants.",
            )

    def save_related(
        self, request: HttpRequest, form: ModelForm[User], formsets: Any, change: bool
    ) -> None:
        # Roles were saved by `services.update_account` (a ticked Compliance became a
        # pending grant); the form's own m2m save would put the group on directly.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    # Every change to an account is a staff-account change: with the second factor on,
    # none is taken from a session that has not verified it (accounts/second_factor.py).
    @method_decorator(require_second_factor())
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().changeform_view(request, object_id, form_url, extra_context)

    @method_decorator(require_second_factor())
    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return super().delete_view(request, object_id, extra_context)

    @method_decorator(sensitive_post_parameters())
    @method_decorator(require_second_factor())
    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Set a password here only for an account that is not Compliance or superuser.

        Everyone may change their own. For a Compliance member or a superuser, an Admin
        sends a link to the owner's address instead (or deactivates the account).
        """
        user = self.get_object(request, unquote(id))
        if user is None or not self.has_change_permission(request, user):
            return super().user_change_password(request, id, form_url)
        editor = _editor(request)
        change_url = reverse("admin:accounts_user_change", args=[user.pk])
        if user.pk != editor.pk and user.is_protected_account():
            messages.error(request, services.protected_password_refusal(user))
            return HttpResponseRedirect(change_url)
        if request.method == "POST":
            form = self.change_password_form(user, request.POST)
            consistent = form.is_valid() and (
                form.cleaned_data["set_usable_password"] or "unset-password" in request.POST
            )
            if consistent:
                try:
                    services.save_password(form.save(commit=False), by=editor, via="admin form")
                except services.AccountRefused as exc:
                    messages.error(request, str(exc))
                    return HttpResponseRedirect(change_url)
                self.log_change(request, user, self.construct_change_message(request, form, []))
                messages.success(
                    request,
                    "Password changed."
                    if user.has_usable_password()
                    else "Password-based sign-in was disabled.",
                )
                update_session_auth_hash(request, form.user)
                return HttpResponseRedirect(change_url)
        # Showing the form, or showing its errors: Django's own page does that.
        return super().user_change_password(request, id, form_url)

    @method_decorator(require_second_factor())
    def send_password_link_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: mail the owner a link to choose their password (audited)."""
        user = self.get_object(request, unquote(object_id))
        if user is None:
            raise Http404
        if not self.has_change_permission(request, user):
            raise PermissionDenied
        editor = _editor(request)
        try:
            services.send_password_link(
                user, by=editor, reason=f"{editor.username} sent you a link to choose a password"
            )
        except services.AccountRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"A link to choose a password was sent to {user.email}.")
        return HttpResponseRedirect(reverse("admin:accounts_user_change", args=[user.pk]))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        context["can_send_password_link"] = bool(
            obj is not None
            and obj.is_staff
            and obj.is_active
            and self.has_change_permission(request, obj)
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults: "<path:object_id>/" would otherwise swallow "import/".
        return [
            path(
                "password-link/<uidb64>/<token>/",
                # Not behind the admin login: the owner arrives here from their mailbox.
                PasswordLinkView.as_view(),
                name="accounts_user_password_link",
            ),
            path(
                "<path:object_id>/send-password-link/",
                self.admin_site.admin_view(require_POST(self.send_password_link_view)),
                name="accounts_user_send_password_link",
            ),
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="accounts_user_import",
            ),
            path(
                "import/confirm/",
                self.admin_site.admin_view(require_POST(self.import_confirm_view)),
                name="accounts_user_import_confirm",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_import_users": can_import_users(request)}
        return super().changelist_view(request, extra_context)

    def _import_context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            **extra,
        }

    def _render_upload(
        self, request: HttpRequest, form: ImportUploadForm, *, error: str = "", status: int = 200
    ) -> HttpResponse:
        context = self._import_context(request, "Import users", form=form, error=error)
        return TemplateResponse(
            request, "admin/accounts/user/import_form.html", context, status=status
        )

    def _render_report(
        self, request: HttpRequest, report: ImportReport, *, token: str = ""
    ) -> HttpResponse:
        title = "Check the import" if report.dry_run else "Import finished"
        context = self._import_context(
            request, title, report=report, confirm_form=ImportConfirmForm(initial={"token": token})
        )
        return TemplateResponse(request, "admin/accounts/user/import_report.html", context)

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a CSV: store it, show the dry-run report and a signed Confirm."""
        user = request.user
        if not can_import_users(request) or not isinstance(user, User):
            raise PermissionDenied
        if request.method != "POST":
            return self._render_upload(request, ImportUploadForm())
        form = ImportUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return self._render_upload(request, form, status=400)
        upload: UploadedFile = form.cleaned_data["csv_file"]
        source = Path(upload.name or "upload.csv").name
        stored: Path | None = None
        try:
            stored = store_upload(upload)
            report = import_users_csv(stored, dry_run=True, source=source)
        except ImportFileError as exc:
            if stored is not None:
                stored.unlink(missing_ok=True)
            form.add_error("csv_file", str(exc))
            return self._render_upload(request, form, status=400)
        token = make_import_token(stored, user=user, source=source)
        return self._render_report(request, report, token=token)

    def import_confirm_view(self, request: HttpRequest) -> HttpResponse:
        """Run the import the user saw in the dry run (POST only, CSRF-checked by the admin)."""
        user = request.user
        if not can_import_users(request) or not isinstance(user, User):
            raise PermissionDenied
        confirm = ImportConfirmForm(request.POST)
        try:
            if not confirm.is_valid():
                raise InvalidImportToken("This confirmation is not valid.")
            stored, source = resolve_import_token(confirm.cleaned_data["token"], user=user)
            report = import_users_csv(stored, actor=user, source=source)
        except (InvalidImportToken, ImportFileError) as exc:
            return self._render_upload(request, ImportUploadForm(), error=str(exc), status=400)
        # Done: the file has served its purpose, and a second Confirm finds nothing to run.
        stored.unlink(missing_ok=True)
        level = messages.WARNING if report.error_count else messages.SUCCESS
        messages.add_message(request, level, f"Imported {source}: {report.summary()}")
        return self._render_report(request, report)


@admin.register(RoleGrant)
class RoleGrantAdmin(ReadOnlyAdmin):
    """Pending grants, where a Compliance member (not the requester, not the grantee) decides."""

    change_form_template = "admin/accounts/rolegrant/change_form.html"
    list_display = (
        "user",
        "user_email",
        "kind",
        "outcome",
        "requested_by",
        "requested_at",
        "decided_by",
    )
    list_filter = ("outcome", "kind")
    list_select_related = ("user", "requested_by", "decided_by")
    search_fields = ("user__username", "user__email")
    fields = (
        "user",
        "user_email",
        "password_state",
        "kind",
        "requested_by",
        "requested_at",
        "outcome",
        "decided_by",
        "decided_at",
        "note",
    )
    readonly_fields = fields

    @admin.display(description="address")
    def user_email(self, obj: RoleGrant) -> str:
        return obj.user.email

    @admin.display(description="on confirmation")
    def password_state(self, obj: RoleGrant) -> str:
        if obj.user.password_owner_only:
            return "The password stays: only the owner chose it."
        return (
            f"The password is disabled and a link to choose one goes to {obj.user.email}: "
            "make sure this address is the person's own."
        )

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/decide/",
                self.admin_site.admin_view(require_POST(self.decide_view)),
                name="accounts_rolegrant_decide",
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
        grant = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if grant is not None:
            extra["decision_refusal"] = grant_decision_refusal(grant, request.user)
            extra["grant"] = grant
        return super().change_view(request, object_id, form_url, extra)

    @method_decorator(require_second_factor())
    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST confirm or refuse (CSRF-checked by the admin); the service holds the rules."""
        grant = self.get_object(request, unquote(object_id))
        if grant is None:
            raise Http404
        decider = _editor(request)
        if not decider.has_role_perm("accounts.decide_rolegrant"):
            raise PermissionDenied("Only a Compliance member can confirm or refuse a grant.")
        confirm = "confirm" in request.POST
        try:
            services.decide_grant(
                grant, by=decider, confirm=confirm, note=request.POST.get("note", "")
            )
        except services.AccountRefused as exc:
            messages.error(request, str(exc))
        else:
            done = "confirmed" if confirm else "refused"
            messages.success(request, f"{grant.get_kind_display()} for {grant.user}: {done}.")
        return HttpResponseRedirect(reverse("admin:accounts_rolegrant_change", args=[grant.pk]))


def grant_decision_refusal(grant: RoleGrant, user: Any) -> str | None:
    """Why `user` may not decide `grant` (for the page), or None if they may."""
    if grant.outcome != RoleGrant.Outcome.PENDING:
        return f"This grant was {grant.get_outcome_display().lower()}."
    if not isinstance(user, User) or not user.has_role_perm("accounts.decide_rolegrant"):
        return "Only a Compliance member can confirm or refuse a grant."
    if user.pk == grant.user_id:
        return "This grant is for you: another Compliance member must decide it."
    if user.pk == grant.requested_by_id:
        return "You asked for this grant: another Compliance member must decide it."
    return None


# Roles are groups defined in code (accounts/roles.py) and synced at every migrate: the
# admin shows them, and nobody edits them here (not even a superuser).
admin.site.unregister(Group)


@admin.register(Group)
class RoleGroupAdmin(ReadOnlyAdmin):
    list_display = ("name",)
    fields = ("name", "permissions")
    readonly_fields = fields


# AdminSite has no hook for the form its own "Change password" page saves with. Replacing
# that page on the default site (the one config/urls.py mounts) records the change as the
# owner's, keeping "known to the owner only" true when it was.
admin.site.password_change = own_password_change  # type: ignore[method-assign]


# django-otp's device admin would show recovery codes and TOTP keys, and let a superuser
# put a device of their own on someone else's account: enrolment is the owner's page only
# (admin/second-factor/). The plugin admins register before this module (INSTALLED_APPS).
for _device_model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_device_model):
        admin.site.unregister(_device_model)
