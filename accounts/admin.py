"""User administration and the CSV import flow (upload, dry-run report, signed confirm)."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from .forms import ImportConfirmForm, ImportUploadForm, UserChangeForm, UserCreationForm
from .importer import ImportFileError, ImportReport, import_users_csv
from .models import User

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
        and (user.is_superuser or user.has_role_perm("accounts.add_user"))
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


@admin.register(User)
class UserAdmin(DjangoUserAdmin[User]):
    form = UserChangeForm
    add_form = UserCreationForm
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "locale",
        "is_staff",
        "group_names",
    )
    list_filter = ("is_staff", "groups", "locale")
    search_fields = ("email", "username", "first_name", "last_name")
    ordering = ("username",)
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email", "time_zone")}),
        ("Audience", {"fields": ("locale", "attributes", "seed_addresses")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
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

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults: "<path:object_id>/" would otherwise swallow "import/".
        return [
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
