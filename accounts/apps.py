from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules use models, and an AppConfig module
        # is imported before any model is loaded.
        from axes.signals import user_locked_out

        from .login_throttle import audit_lockout
        from .second_factor import connect_signals

        user_locked_out.connect(audit_lockout, dispatch_uid="countersign-audit-lockout")
        connect_signals()
