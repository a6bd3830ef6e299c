"""ModelAdmin bases whose permissions come from roles, never from `is_superuser`.

A superuser gets no automatic pass to compose, approve or send: what a staff member may
see or change in the admin is what their role groups grant (`User.has_role_perm`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import User


def has_role(request: HttpRequest, perm: str) -> bool:
    user = request.user
    return isinstance(user, User) and user.is_active and user.has_role_perm(perm)


class RoleAdmin(admin.ModelAdmin[Any]):
    """Admin permissions from roles, not from is_superuser."""

    def _perm(self, action: str) -> str:
        return f"{self.opts.app_label}.{action}_{self.opts.model_name}"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return has_role(request, self._perm("view")) or has_role(request, self._perm("change"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return has_role(request, self._perm("add"))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return has_role(request, self._perm("change"))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return has_role(request, self._perm("delete"))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)


class ReadOnlyAdmin(RoleAdmin):
    """Ledgers and records: looked at, never edited through the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
