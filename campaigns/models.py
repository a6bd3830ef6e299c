"""Campaigns, the per-recipient delivery ledger, approvals, suppressions and provider events."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.validators import validate_person_text
from audit.models import RetainedQuerySet

# A bare address: no separators, quotes, brackets or whitespace of any kind. The project's
# address validator runs before every insert; this constraint is the database's own
# refusal, so no code path (bulk_create, raw SQL, a future bug) can store "a@x, b@y".
BARE_ADDRESS_REGEX = r'^[^\s,;<>"()\[\]\\:@]+@[^\s,;<>"()\[\]\\:@]+$'


class TransitionError(Exception):
    """A campaign action that is not allowed in the campaign's current state or for this user."""


class IllegalTransition(TransitionError):
    pass


class TwoPersonRuleViolation(TransitionError):
    pass


class StaleDigest(TransitionError):
    pass


class SenderIdentity(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="Internal label.")
    # The display name in every From: one line of visible text, as a person's name is.
    from_name = models.CharField(max_length=100, validators=[validate_person_text])
    from_address = models.EmailField()
    reply_to = models.EmailField(blank=True, default="")
    postal_address = models.TextField(
        help_text="Shown in every announcement (required by anti-spam law)."
    )
    message_id_domain = models.CharField(
        max_length=253, help_text="Domain used in Message-IDs, e.g. mail.example.com."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "sender identities"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} <{self.from_address}>"


# Choices are defined at module level so that each model's Meta can name their values in
# its check constraint (a nested class cannot see its enclosing class's names); each model
# carries them as its own attribute, e.g. `Campaign.Status.DRAFT`.


class CampaignCategory(models.TextChoices):
    ANNOUNCEMENT = "announcement", "Announcement (unsubscribe link, postal address)"
    SERVICE_NOTICE = "service_notice", "Service notice (mandatory, no unsubscribe)"


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    IN_REVIEW = "in_review", "In review"
    APPROVED = "approved", "Approved"
    SENDING = "sending", "Sending"
    PAUSED = "paused", "Paused"
    SENT = "sent", "Sent"
    CANCELLED = "cancelled", "Cancelled"


class Campaign(models.Model):
    Category = CampaignCategory
    Status = CampaignStatus

    # What staff compose: a change to any of these voids a submission or an approval.
    CONTENT_FIELDS = (
        "name",
        "category",
        "sender",
        "subject_template",
        "text_template",
        "html_template",
        "audience_locale",
        "audience_joined_after",
        "audience_joined_before",
        "audience_attribute_name",
        "audience_attribute_value",
        "audience_addresses",
        "scheduled_at",
    )

    name = models.CharField(max_length=200)
    category = models.CharField(
        max_length=20, choices=Category.choices, default=Category.ANNOUNCEMENT
    )
    sender = models.ForeignKey(SenderIdentity, on_delete=models.PROTECT, related_name="campaigns")
    subject_template = models.CharField("subject", max_length=500)
    text_template = models.TextField(
        "text part",
        blank=True,
        default="",
        help_text="Plain-text part. Empty: derived from the HTML.",
    )
    html_template = models.TextField("HTML part", blank=True, default="")

    # Audience: active audience members, narrowed by these filters (all optional).
    audience_locale = models.CharField(
        "locale",
        max_length=35,
        blank=True,
        default="",
        help_text="Exact match, e.g. de or en-GB. Empty: every locale.",
    )
    audience_joined_after = models.DateTimeField("joined on or after", null=True, blank=True)
    audience_joined_before = models.DateTimeField("joined before", null=True, blank=True)
    audience_attribute_name = models.CharField("attribute", max_length=64, blank=True, default="")
    audience_attribute_value = models.CharField("equals", max_length=255, blank=True, default="")
    audience_addresses = models.TextField(
        "only these addresses",
        blank=True,
        default="",
        help_text="Optional uploaded list, one address per line: only these members receive it.",
    )

    scheduled_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty: send as soon as it is approved."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)

    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authored_campaigns"
    )
    # Everyone who ever authored, edited or submitted this campaign: none of them may approve it.
    contributors = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="contributed_campaigns", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    edited_at = models.DateTimeField(null=True, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    rejected_at = models.DateTimeField(null=True, blank=True)
    sending_started_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.TextField(blank=True, default="")
    resumed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resumed_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    cancelled_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Frozen at submission: what the reviewer approves.
    frozen_digest = models.CharField(max_length=64, blank=True, default="")
    audience_hash = models.CharField(max_length=64, blank=True, default="")
    recipient_count = models.PositiveIntegerField(default=0)
    # The digest of the current approval; the worker re-checks it before every batch.
    approved_digest = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("approve_campaign", "Can approve or reject a campaign (Compliance)"),
            ("submit_campaign", "Can submit a campaign for review"),
            ("send_test_campaign", "Can send a campaign test to own seed addresses"),
            ("operate_campaign", "Can pause, resume and cancel sending"),
            ("resolve_delivery", "Can resend or mark sent a delivery in unknown state"),
            ("emergency_stop", "Can halt and release all sending"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=CampaignStatus.values),
                name="campaigns_campaign_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(category__in=CampaignCategory.values),
                name="campaigns_campaign_category_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_announcement(self) -> bool:
        return self.category == self.Category.ANNOUNCEMENT

    def require_status(self, *allowed: str) -> None:
        if self.status not in allowed:
            names = ", ".join(self.Status(s).label for s in allowed)
            raise IllegalTransition(
                f"“{self.name}” is {self.get_status_display().lower()}; this needs: {names}."
            )


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CLAIMED = "claimed", "Claimed"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    RETRY_WAIT = "retry_wait", "Waiting to retry"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    BLOCKED = "blocked", "Blocked by the guard"
    UNKNOWN = "unknown", "Unknown (needs a decision)"
    DELIVERED = "delivered", "Delivered"
    BOUNCED = "bounced", "Bounced"
    COMPLAINED = "complained", "Complained"


class Delivery(models.Model):
    """The per-recipient ledger: one row per (campaign, recipient), frozen at submission."""

    Status = DeliveryStatus

    # Still to be worked on by the sender; the campaign is complete when none remain.
    OPEN_STATUSES = (
        DeliveryStatus.PENDING,
        DeliveryStatus.CLAIMED,
        DeliveryStatus.SENDING,
        DeliveryStatus.RETRY_WAIT,
    )

    # No index of its own: the three composite indexes below all lead with the campaign,
    # and a fourth would be one more entry to write for every frozen row and every status
    # change.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.PROTECT, related_name="deliveries", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="deliveries"
    )
    address = models.CharField(max_length=254)
    # The recipient's placeholder values, frozen at submission so the approved render is what is sent.
    recipient_data = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    message_id = models.CharField(max_length=255, blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint("campaign", "user", name="campaigns_delivery_one_per_user"),
            models.UniqueConstraint(
                "campaign", Lower("address"), name="campaigns_delivery_one_per_address"
            ),
            models.CheckConstraint(
                condition=Q(address__regex=BARE_ADDRESS_REGEX),
                name="campaigns_delivery_bare_address",
            ),
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values),
                name="campaigns_delivery_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["campaign", "status"], name="campaigns_delivery_work"),
            models.Index(fields=["message_id"], name="campaigns_delivery_msgid"),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


class ApprovalDecision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Approval(models.Model):
    """An immutable record of a review decision and of exactly what the reviewer saw."""

    Decision = ApprovalDecision

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="approvals")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True, default="")
    digest = models.CharField(max_length=64)
    recipient_count = models.PositiveIntegerField()
    audience_hash = models.CharField(max_length=64)
    # [{"delivery_id": ..., "label": ..., "eml": "<raw message as previewed>"}, ...]
    samples = models.JSONField(default=list)
    voided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    # Kept for good, like the audit chain: retention purges deliveries, never decisions.
    objects = RetainedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(decision__in=ApprovalDecision.values),
                name="campaigns_approval_decision_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.reviewer} on {self.campaign}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The decision is immutable; only voiding (an edit after approval) may touch the row.
        if self.pk is not None and kwargs.get("update_fields") != ["voided_at"]:
            raise ValueError("Approvals are immutable.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Approvals are immutable.")


class SuppressionReason(models.TextChoices):
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    COMPLAINT = "complaint", "Complaint"
    MANUAL = "manual", "Manual"


class Suppression(models.Model):
    Reason = SuppressionReason

    address = models.CharField(max_length=254, unique=True, help_text="Stored lower-case.")
    reason = models.CharField(max_length=20, choices=Reason.choices)
    source = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(reason__in=SuppressionReason.values),
                name="campaigns_suppression_reason_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.get_reason_display()})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.address = self.address.strip().lower()
        super().save(*args, **kwargs)

    def applies_to(self, category: str) -> bool:
        """Unsubscribes silence announcements only; bounces, complaints and manual ones silence all."""
        if self.reason == self.Reason.UNSUBSCRIBED:
            return category == Campaign.Category.ANNOUNCEMENT
        return True


class ProviderEvent(models.Model):
    """A tracking event from the provider's webhook, stored once per event id."""

    provider = models.CharField(max_length=50)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=50)
    recipient = models.CharField(max_length=254, blank=True, default="")
    message_id = models.CharField(max_length=255, blank=True, default="")
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    payload = models.JSONField(default=dict)
    occurred_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint("provider", "event_id", name="campaigns_providerevent_once"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.recipient}"


class SendingSwitch(models.Model):
    """The emergency stop: a single row. While halted, no worker sends anything."""

    halted = models.BooleanField(default=False)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return "halted" if self.halted else "running"

    @classmethod
    def get(cls) -> SendingSwitch:
        switch, _ = cls.objects.get_or_create(pk=1)
        return switch

    @classmethod
    def is_halted(cls) -> bool:
        return cls.objects.filter(pk=1, halted=True).exists()


class RateBucket(models.Model):
    """Database-backed token bucket, used when REDIS_URL is not set."""

    key = models.CharField(max_length=200, unique=True)
    tokens = models.FloatField()
    updated_at = models.FloatField(help_text="Unix time of the last refill.")

    def __str__(self) -> str:
        return self.key


class DeliveryCount(models.Model):
    """How many deliveries of a campaign moved into (n > 0) or out of (n < 0) a status, per minute.

    Kept by database triggers on `campaigns_delivery` (migration 0005), so no code path that
    writes the ledger (the worker, the sweeper, bulk inserts, raw SQL) can forget it, and the
    worker code does not change. Writers only ever INSERT here (on PostgreSQL a statement-level
    trigger adds one row per (campaign, status) the statement touched): there is no shared
    counter row for concurrent workers to queue on or deadlock over. Readers sum the rows for
    one campaign and fold them (`campaigns.progress`) when they pile up, so a read stays a
    handful of index rows however many deliveries there are. The minute makes the same rows
    the data of the sends-per-minute chart.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=20)
    minute = models.DateTimeField()
    n = models.BigIntegerField()

    class Meta:
        indexes = [
            models.Index(fields=["campaign", "minute"], name="campaigns_deliverycount_c_m"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.status} {self.minute:%H:%M} {self.n:+d}"
