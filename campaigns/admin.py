"""The Django admin is Countersign's staff interface: compose, review, operate.

Permissions are decided by roles (`User.has_role_perm`): a superuser gets no automatic
pass to compose, approve or send.
"""

from __future__ import annotations

from functools import update_wrapper
from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

from accounts.models import User
from accounts.role_admin import ReadOnlyAdmin, RoleAdmin, has_role
from audit.chain import record_audit
from audit.models import AuditEvent

from . import services, views
from .admin_suppressions import SuppressionAdmin
from .forms import CampaignForm
from .models import (
    Approval,
    Campaign,
    Delivery,
    ProviderEvent,
    SenderIdentity,
    SendingSwitch,
    Suppression,
)
from .worker import delivery_summary

admin.site.register(Suppression, SuppressionAdmin)
admin.site.site_header = "Countersign"
admin.site.site_title = "Countersign"
admin.site.index_title = "Campaigns that reach one person per message"


@admin.register(SenderIdentity)
class SenderIdentityAdmin(RoleAdmin):
    """Who a campaign says it is from. Every create, change and delete is in the audit chain.

    The admin's add, change and delete views run in a transaction, so the event commits
    with the change or not at all.
    """

    list_display = ("name", "from_name", "from_address", "reply_to", "message_id_domain")
    search_fields = ("name", "from_address")
    AUDITED_FIELDS = (
        "name",
        "from_name",
        "from_address",
        "reply_to",
        "postal_address",
        "message_id_domain",
    )

    def _values(self, obj: SenderIdentity) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in self.AUDITED_FIELDS}

    def save_model(
        self,
        request: HttpRequest,
        obj: SenderIdentity,
        form: ModelForm[SenderIdentity],
        change: bool,
    ) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            record_audit(
                "sender_identity.created", actor=request.user, obj=obj, data=self._values(obj)
            )
            return
        changes = {
            name: [form.initial.get(name), getattr(obj, name)]
            for name in form.changed_data
            if name in self.AUDITED_FIELDS
        }
        if changes:
            record_audit(
                "sender_identity.changed",
                actor=request.user,
                obj=obj,
                data={"name": obj.name, "changes": changes},
            )

    def delete_model(self, request: HttpRequest, obj: SenderIdentity) -> None:
        # Recorded first, while the row still has its id; a refused delete (a campaign
        # still uses it) rolls the event back with it.
        record_audit("sender_identity.deleted", actor=request.user, obj=obj, data=self._values(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[SenderIdentity]) -> None:
        with transaction.atomic():
            for obj in queryset:
                record_audit(
                    "sender_identity.deleted", actor=request.user, obj=obj, data=self._values(obj)
                )
            super().delete_queryset(request, queryset)


EDITABLE = (Campaign.Status.DRAFT, Campaign.Status.IN_REVIEW, Campaign.Status.APPROVED)


@admin.register(Campaign)
class CampaignAdmin(RoleAdmin):
    form = CampaignForm
    change_form_template = "admin/campaigns/campaign/change_form.html"
    list_display = (
        "name",
        "category",
        "status",
        "author",
        "recipient_count",
        "scheduled_at",
        "created_at",
    )
    list_filter = ("status", "category")
    search_fields = ("name", "subject_template")
    list_select_related = ("author", "sender")
    fieldsets = (
        (None, {"fields": ("name", "category", "sender")}),
        ("Content", {"fields": ("subject_template", "text_template", "html_template")}),
        (
            "Audience",
            {
                "fields": (
                    "audience_count",
                    "audience_locale",
                    ("audience_joined_after", "audience_joined_before"),
                    ("audience_attribute_name", "audience_attribute_value"),
                    "audience_addresses",
                ),
                "description": "All active audience members, narrowed by these filters.",
            },
        ),
        ("Schedule", {"fields": ("scheduled_at",), "description": "Shown in your time zone."}),
    )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status not in EDITABLE:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # cancel instead: the ledger and its history stay

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only: the live count belongs to composing; the frozen count is in the panel.
            return [
                (
                    name,
                    {**opts, "fields": tuple(f for f in opts["fields"] if f != "audience_count")},
                )
                for name, opts in fieldsets
            ]
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        return super().get_queryset(request).select_related("author", "sender")

    def save_model(
        self, request: HttpRequest, obj: Campaign, form: ModelForm[Campaign], change: bool
    ) -> None:
        assert isinstance(request.user, User)
        if change:
            services.edit_campaign(obj, by=request.user, changed=form.changed_data)
        else:
            services.create_campaign(obj, by=request.user)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        extra = dict(extra_context or {})
        extra["can_emergency_stop"] = has_role(request, "campaigns.emergency_stop")
        extra["sending_halted"] = SendingSwitch.is_halted()
        return super().changelist_view(request, extra_context=extra)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        campaign = Campaign.objects.filter(pk=object_id).first()
        extra = dict(extra_context or {})
        if campaign is not None:
            user = request.user
            assert isinstance(user, User)
            if request.method == "POST" and campaign.status in (
                Campaign.Status.IN_REVIEW,
                Campaign.Status.APPROVED,
            ):
                messages.warning(
                    request,
                    "Editing a submitted or approved campaign returns it to draft and voids its review.",
                )
            counts = delivery_summary(campaign.pk)
            extra.update(
                campaign=campaign,
                delivery_counts=[(Delivery.Status(s).label, n) for s, n in sorted(counts.items())],
                audit_events=AuditEvent.objects.filter(
                    object_type="campaigns.campaign", object_id=str(campaign.pk)
                ).order_by("seq"),
                approvals=campaign.approvals.select_related("reviewer").order_by("created_at"),
                can_submit=campaign.status == Campaign.Status.DRAFT
                and user.has_role_perm("campaigns.submit_campaign"),
                can_test_send=campaign.status != Campaign.Status.CANCELLED
                and user.has_role_perm("campaigns.send_test_campaign"),
                can_review=bool(campaign.frozen_digest)
                and user.has_role_perm("campaigns.view_campaign"),
                seed_addresses=user.seed_address_list(),
                can_operate=user.has_role_perm("campaigns.operate_campaign"),
                can_resolve=user.has_role_perm("campaigns.resolve_delivery"),
                unknown_total=counts.get(Delivery.Status.UNKNOWN, 0),
                unknown_deliveries=Delivery.objects.filter(
                    campaign=campaign, status=Delivery.Status.UNKNOWN
                ).order_by("id")[:200],
            )
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.admin_site.admin_view(view)(*args, **kwargs)

            return update_wrapper(wrapper, view)

        def review(request: HttpRequest, pk: int) -> HttpResponse:
            return views.review(request, pk, self.admin_site.each_context(request))

        name = "campaigns_campaign_"
        custom = [
            path("audience-count/", wrap(views.audience_count), name=name + "audience_count"),
            path("<int:pk>/submit/", wrap(views.submit), name=name + "submit"),
            path("<int:pk>/review/", wrap(review), name=name + "review"),
            path("<int:pk>/approve/", wrap(views.approve), name=name + "approve"),
            path("<int:pk>/reject/", wrap(views.reject), name=name + "reject"),
            path("<int:pk>/test-send/", wrap(views.test_send), name=name + "test_send"),
            path(
                "<int:pk>/preview/<int:delivery_id>.eml",
                wrap(views.preview_eml),
                name=name + "preview_eml",
            ),
            path(
                "<int:pk>/preview/<int:delivery_id>.html",
                wrap(views.preview_html),
                name=name + "preview_html",
            ),
            path(
                "<int:pk>/recipients.csv", wrap(views.recipients_csv), name=name + "recipients_csv"
            ),
            path("<int:pk>/record.zip", wrap(views.compliance_record), name=name + "record"),
            path("<int:pk>/pause/", wrap(views.pause), name=name + "pause"),
            path("<int:pk>/resume/", wrap(views.resume), name=name + "resume"),
            path("<int:pk>/cancel/", wrap(views.cancel), name=name + "cancel"),
            path("<int:pk>/resend/", wrap(views.resend), name=name + "resend"),
            path("<int:pk>/mark-sent/", wrap(views.mark_sent), name=name + "mark_sent"),
        ]
        return custom + super().get_urls()


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "address", "status", "attempts", "sent_at", "message_id")
    list_filter = ("status",)
    search_fields = ("address", "message_id", "provider_message_id")
    list_select_related = ("campaign",)
    raw_id_fields = ("campaign", "user")


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("campaign", "decision", "reviewer", "created_at", "digest", "voided_at")
    list_filter = ("decision",)
    list_select_related = ("campaign", "reviewer")


@admin.register(ProviderEvent)
class ProviderEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "provider", "event_type", "recipient", "message_id")
    list_filter = ("provider", "event_type")
    search_fields = ("recipient", "message_id", "event_id")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit chain, read-only, for every role that may see it."""

    list_display = ("seq", "created_at", "actor_label", "action", "object_type", "object_id")
    list_filter = ("action",)
    search_fields = ("action", "actor_label", "object_id")
