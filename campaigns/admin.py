"""The Django admin is Countersign's staff interface: compose, review, operate.

Permissions are decided by roles (`User.has_role_perm`): a superuser gets no automatic
pass to compose, approve or send.
"""

from __future__ import annotations

from datetime import datetime
from functools import update_wrapper
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from accounts.models import User
from accounts.role_admin import ReadOnlyAdmin, RoleAdmin, has_role
from audit.chain import record_audit
from audit.models import AuditEvent

from . import services, views
from .admin_suppressions import SuppressionAdmin
from .audience import count_audience
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
from .progress import campaign_progress, chart_svg_points, progress_for
from .rendering import campaign_placeholders

admin.site.register(Suppression, SuppressionAdmin)
admin.site.site_header = "Countersign"
admin.site.site_title = "Countersign"
admin.site.index_title = "Campaigns that reach one person per message"
# Countersign has no public site: "View site" would lead to a 404.
admin.site.site_url = None


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


def _short_time(value: datetime) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M}"


EDITABLE = (Campaign.Status.DRAFT, Campaign.Status.IN_REVIEW, Campaign.Status.APPROVED)


@admin.register(Campaign)
class CampaignAdmin(RoleAdmin):
    form = CampaignForm
    change_form_template = "admin/campaigns/campaign/change_form.html"
    # Short cells: at 1366 px the long category labels and dates clipped the last columns.
    list_display = (
        "name",
        "kind",
        "status_badge",
        "author",
        "recipients",
        "scheduled",
        "created",
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

    class Media:
        css = {"all": ("campaigns/dashboard.css",)}
        js = ("campaigns/progress.js",)

    @admin.display(description="category", ordering="category")
    def kind(self, obj: Campaign) -> str:
        return (
            "Service notice" if obj.category == Campaign.Category.SERVICE_NOTICE else "Announcement"
        )

    @admin.display(description="scheduled", ordering="scheduled_at")
    def scheduled(self, obj: Campaign) -> str:
        return _short_time(obj.scheduled_at) if obj.scheduled_at else "on approval"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Campaign) -> str:
        return _short_time(obj.created_at)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Campaign) -> str:
        return format_html(
            '<span class="cs-badge cs-{}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description="recipients · progress", ordering="recipient_count")
    def recipients(self, obj: Campaign) -> str:
        # A draft has no frozen list yet: show what submitting it now would freeze. Two
        # COUNT queries per draft (a scan with an uploaded list), only for drafts on the page.
        if obj.status == Campaign.Status.DRAFT:
            return format_html(
                '{} <span class="help" title="{}">(now)</span>',
                count_audience(obj).recipients,
                "Live count from the filters; frozen when submitted",
            )
        progress = getattr(obj, "_progress", None)
        if progress is None or not obj.sending_started_at:
            return str(obj.recipient_count)
        # Once sending has started, the count is the progress bar's maximum.
        url = reverse("admin:campaigns_campaign_progress", args=[obj.pk])
        return format_html(
            '<span class="cs-progress-cell" data-progress-url="{}" data-live="{}">'
            '<progress class="cs-mini" value="{}" max="{}">{}%</progress> '
            '<span data-field="sent">{}</span> / <span data-field="total">{}</span></span>',
            url,
            "1" if progress.live else "0",
            progress.sent,
            progress.total,
            progress.percent,
            progress.sent,
            progress.total,
        )

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One counter query for the whole page, not one per row.
        rows = list(changelist.result_list)
        for obj, progress in zip(rows, progress_for(rows).values(), strict=True):
            obj._progress = progress
        changelist.result_list = rows
        return changelist

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status not in EDITABLE:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # cancel instead: the ledger and its history stay

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (name, dict(opts)) for name, opts in super().get_fieldsets(request, obj)
        ]
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only: the live count belongs to composing; the frozen count is in the panel.
            return [
                (
                    name,
                    {**opts, "fields": tuple(f for f in opts["fields"] if f != "audience_count")},
                )
                for name, opts in fieldsets
            ]
        return [
            (name, {**opts, "description": self._content_help(obj)})
            if name == "Content"
            else (name, opts)
            for name, opts in fieldsets
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        return super().get_queryset(request).select_related("author", "sender")

    @staticmethod
    def _content_help(obj: Campaign | None) -> str:
        """Every placeholder a template may use (imported attributes included), each a
        button that inserts it (placeholders.js; plain text with scripts off), and what
        the builder adds by itself."""
        category = obj.category if obj is not None else Campaign.Category.ANNOUNCEMENT
        names = sorted(campaign_placeholders(category))
        buttons = format_html_join(
            " ",
            '<button type="button" class="cs-placeholder" data-insert="{}"><code>{}</code></button>',
            (("{{ " + n + " }}", "{{ " + n + " }}") for n in names),
        )
        return format_html(
            '<span class="cs-placeholders">Placeholders (click to insert where you are typing): '
            "{}. A default: <code>{}</code>; without one, a recipient missing the value is not "
            'sent.</span><br><span class="cs-footer-note">Announcements: the builder adds '
            "a footer with the unsubscribe link and the sender's postal address to each part "
            "that lacks them, and the List-Unsubscribe headers.</span>",
            buttons,
            '{{ first_name|default:"there" }}',
        )

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
            progress = campaign_progress(campaign)
            extra.update(
                campaign=campaign,
                progress=progress,
                chart=chart_svg_points(progress),
                progress_url=reverse("admin:campaigns_campaign_progress", args=[campaign.pk]),
                audit_events=AuditEvent.objects.filter(
                    object_type="campaigns.campaign", object_id=str(campaign.pk)
                ).order_by("seq"),
                approvals=campaign.approvals.select_related("reviewer").order_by("created_at"),
                # Shown on top while the campaign is back in draft: what the reviewer asked for.
                last_rejection=campaign.approvals.filter(decision=Approval.Decision.REJECTED)
                .select_related("reviewer")
                .order_by("-created_at")
                .first()
                if campaign.status == Campaign.Status.DRAFT and campaign.rejected_at
                else None,
                can_submit=campaign.status == Campaign.Status.DRAFT
                and user.has_role_perm("campaigns.submit_campaign"),
                can_test_send=campaign.status != Campaign.Status.CANCELLED
                and user.has_role_perm("campaigns.send_test_campaign"),
                can_review=bool(campaign.frozen_digest)
                and user.has_role_perm("campaigns.view_campaign"),
                seed_addresses=user.seed_address_list(),
                can_operate=user.has_role_perm("campaigns.operate_campaign"),
                can_resolve=user.has_role_perm("campaigns.resolve_delivery"),
                unknown_total=progress.counts["unknown"],
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

        def deliveries(request: HttpRequest, pk: int) -> HttpResponse:
            return views.deliveries(request, pk, self.admin_site.each_context(request))

        def delivery_message(request: HttpRequest, pk: int, delivery_id: int) -> HttpResponse:
            return views.delivery_message(
                request, pk, delivery_id, self.admin_site.each_context(request)
            )

        @require_POST
        def compose_preview(request: HttpRequest, pk: int | None = None) -> HttpResponse:
            # Whoever may edit this campaign (or add one) may preview it while composing:
            # the admin's own permission, the one that lets the form be saved.
            campaign = None
            if pk is not None:
                campaign = get_object_or_404(
                    Campaign.objects.select_related("sender", "author"), pk=pk
                )
                allowed = self.has_change_permission(request, campaign)
            else:
                allowed = self.has_add_permission(request)
            if not allowed:
                raise PermissionDenied("Only those who may edit a campaign preview it here.")
            # The compose page's own form class (admin widgets: a date is two fields).
            form_class = self.get_form(request, campaign, change=campaign is not None)
            return views.compose_preview(
                request, campaign, form_class, self.admin_site.each_context(request)
            )

        name = "campaigns_campaign_"
        custom = [
            path("compose-preview/", wrap(compose_preview), name=name + "compose_preview"),
            path("<int:pk>/compose-preview/", wrap(compose_preview), name=name + "compose_preview"),
            path("<int:pk>/deliveries/", wrap(deliveries), name=name + "deliveries"),
            path(
                "<int:pk>/deliveries/<int:delivery_id>/",
                wrap(delivery_message),
                name=name + "delivery_message",
            ),
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
            path("<int:pk>/progress.json", wrap(views.progress_json), name=name + "progress"),
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
