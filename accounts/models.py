from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractUser, Permission, UserManager
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.utils import timezone

from audit.chain import record_audit

from . import events
from .roles import COMPLIANCE
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
        help_text=(
            "Addresses for test sends, one per line: staff addresses only (or an internal "
            "test domain). Empty: your own email."
        ),
    )
    # Who chose the current password, and whether only the owner can know it. Confirming
    # a Compliance or superuser grant resets any password someone else could know.
    password_set_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    password_set_at = models.DateTimeField(null=True, blank=True)
    password_owner_only = models.BooleanField(
        "password known to the owner only",
        default=False,
        help_text=(
            "Chosen by the owner through a link sent to their address, or changed by them "
            "from such a password."
        ),
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
        attributed = self.__dict__.pop("_password_attributed", False)
        # AbstractBaseUser keeps the raw password set since the last save in `_password`.
        if self.pk is None or getattr(self, "_password", None) is None or attributed:
            super().save(*args, **kwargs)
            return
        # A password set outside the attributed paths (`manage.py changepassword`, a shell):
        # nobody can vouch that only the owner knows it, and the chain still records it.
        self.password_set_by = None
        self.password_set_at = timezone.now()
        self.password_owner_only = False
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {
                *kwargs["update_fields"],
                "password_set_by",
                "password_set_at",
                "password_owner_only",
            }
        with transaction.atomic():
            super().save(*args, **kwargs)
            record_audit(
                events.PASSWORD_SET,
                obj=self,
                data={"username": self.username, "by": "unattributed (command line or code)"},
            )

    def attribute_password(self, by: User | None, *, owner_only: bool) -> None:
        """Record who chose the password just set (or disabled), for the next save."""
        self.password_set_by = by
        self.password_set_at = timezone.now()
        self.password_owner_only = owner_only
        self._password_attributed = True

    def is_protected_account(self) -> bool:
        """A Compliance member or a superuser, active or not.

        Only the owner chooses such an account's password and changes its address (a reset
        link goes to that address); its roles come only through a confirmed grant.
        """
        if self.pk is None:
            return False
        return self.is_superuser or self.groups.filter(name=COMPLIANCE).exists()

    def role_permissions(self) -> set[str]:
        """Permissions from role groups only: being a superuser adds nothing.

        Countersign's roles (and the two-person rule) are decided on these, so a
        superuser cannot approve, compose or send without the matching role. Permissions
        granted to a user one by one count for nothing: a role is a group, defined in code.
        """
        if not self.is_active or self.pk is None:
            return set()
        cache_name = "_role_perm_cache"
        if not hasattr(self, cache_name):
            perms = (
                Permission.objects.filter(group__user=self)
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


# Choices are module-level so the model's Meta can name their values in its constraints.


class GrantKind(models.TextChoices):
    COMPLIANCE = "compliance", "Compliance role"
    SUPERUSER = "superuser", "Superuser flag"


class GrantOutcome(models.TextChoices):
    PENDING = "pending", "Pending"
    CONFIRMED = "confirmed", "Confirmed"
    REFUSED = "refused", "Refused"


class RoleGrant(models.Model):
    """A request to give someone the Compliance role or the superuser flag.

    It takes effect only when a Compliance member who is neither the requester nor the
    grantee confirms it; the database refuses any other decider as well.
    """

    Kind = GrantKind
    Outcome = GrantOutcome

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="role_grants")
    kind = models.CharField("grant", max_length=20, choices=Kind.choices)
    requested_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.PENDING)
    decided_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="", help_text="Why it was refused, if it was.")

    class Meta:
        ordering = ["-requested_at"]
        permissions = [
            ("decide_rolegrant", "Can confirm or refuse a Compliance or superuser grant"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=GrantKind.values), name="accounts_rolegrant_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=GrantOutcome.values),
                name="accounts_rolegrant_outcome_valid",
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        outcome=GrantOutcome.PENDING,
                        decided_by__isnull=True,
                        decided_at__isnull=True,
                    )
                    | (
                        ~Q(outcome=GrantOutcome.PENDING)
                        & Q(decided_by__isnull=False, decided_at__isnull=False)
                    )
                ),
                name="accounts_rolegrant_decided_when_not_pending",
            ),
            models.CheckConstraint(
                condition=~Q(requested_by=F("user")),
                name="accounts_rolegrant_not_requested_by_grantee",
            ),
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True)
                | (~Q(decided_by=F("user")) & ~Q(decided_by=F("requested_by"))),
                name="accounts_rolegrant_decided_by_a_third_person",
            ),
            models.UniqueConstraint(
                fields=["user", "kind"],
                condition=Q(outcome=GrantOutcome.PENDING),
                name="accounts_rolegrant_one_pending_per_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.user} ({self.get_outcome_display().lower()})"
