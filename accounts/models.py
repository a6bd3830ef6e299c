from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractUser, Permission, UserManager
from django.db import models
from django.db.models.functions import Lower

from .validators import validate_single_address


class CountersignUserManager(UserManager["User"]):
    def get_by_natural_key(self, username: str | None) -> User:
        # Staff log in with their username or their email, case-insensitively for email.
        try:
            return self.get(username=username)
        except self.model.DoesNotExist:
            return self.get(email__iexact=username)

    def audience(self) -> models.QuerySet[User]:
        """Everyone who may receive campaigns: active people who are not staff."""
        return self.filter(is_active=True, is_staff=False)


class User(AbstractUser):
    """Staff (is_staff) and audience members (imported, never log in) alike."""

    email = models.EmailField("email address", max_length=254, validators=[validate_single_address])
    locale = models.CharField(max_length=35, blank=True, default="")
    attributes = models.JSONField(
        default=dict,
        blank=True,
        help_text="Imported attributes (flat string values) that templates may use.",
    )
    time_zone = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="IANA name, e.g. Europe/Berlin. Times are stored in UTC and shown in this zone.",
    )
    seed_addresses = models.TextField(
        blank=True,
        default="",
        help_text="Addresses for test sends, one per line. Empty: your own email.",
    )

    objects = CountersignUserManager()  # type: ignore[misc]

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.username if self.is_staff else self.email

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.email = self.email.strip()
        super().save(*args, **kwargs)

    def role_permissions(self) -> set[str]:
        """Permissions from groups and direct grants only: being a superuser adds nothing.

        Countersign's roles (and the two-person rule) are decided on these, so a
        superuser cannot approve, compose or send without the matching role.
        """
        if not self.is_active or self.pk is None:
            return set()
        cache_name = "_role_perm_cache"
        if not hasattr(self, cache_name):
            perms = (
                Permission.objects.filter(models.Q(group__user=self) | models.Q(user=self))
                .values_list("content_type__app_label", "codename")
                .distinct()
            )
            setattr(self, cache_name, {f"{app}.{codename}" for app, codename in perms})
        return set(getattr(self, cache_name))

    def has_role_perm(self, perm: str) -> bool:
        return perm in self.role_permissions()

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    def seed_address_list(self) -> list[str]:
        lines = [line.strip() for line in self.seed_addresses.splitlines() if line.strip()]
        return lines or [self.email]


class AudienceAttribute(models.Model):
    """An imported attribute name: templates may use it as a placeholder."""

    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
