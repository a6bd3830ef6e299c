from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules use models, and an AppConfig module
        # is imported before any model is loaded.
        from accounts.roles import sync_roles_after_migrate

        from . import (
            checks,  # noqa: F401  (registers the system checks)
            webhooks,  # noqa: F401  (connects anymail's tracking signal)
        )

        post_migrate.connect(
            sync_roles_after_migrate, sender=self, dispatch_uid="countersign-roles"
        )
