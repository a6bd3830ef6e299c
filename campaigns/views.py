"""Staff views mounted under /admin/campaigns/campaign/<id>/ and the public unsubscribe page.

Transitions are POST-only and CSRF-checked (the admin wrapper applies csrf_protect); each
starts with a permission-checked lookup. Rules live in services; views turn refusals into
messages.
"""

from __future__ import annotations

import email
import email.policy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Lower
from django.forms import ModelForm
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from accounts.importer import check_attribute_name
from accounts.models import User
from accounts.second_factor import require_second_factor
from audit.chain import record_audit

from . import services
from .audience import count_audience, recipients_csv_rows
from .forms import DecisionForm
from .models import Campaign, Delivery, SendingSwitch, TransitionError
from .permissions import decision_refusal
from .progress import PIPELINE, campaign_progress
from .record import write_record_zip
from .rendering import (
    MESSAGE_ERRORS,
    build_message,
    preview_time,
    recipient_for_delivery,
    render_eml,
)
from .review import PreviewRefused, build_preview, build_review, render_for, since_last_review


def _user(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied
    return user


def campaign_for(request: HttpRequest, pk: int, perm: str) -> tuple[Campaign, User]:
    """Load the campaign after checking that the user's role grants `perm` (403 otherwise)."""
    user = _user(request)
    if not user.has_role_perm(perm):
        raise PermissionDenied(f"Your role does not grant {perm}.")
    campaign = get_object_or_404(Campaign.objects.select_related("sender", "author"), pk=pk)
    return campaign, user


def _back(campaign: Campaign, view: str = "change") -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse(f"admin:campaigns_campaign_{view}", args=[campaign.pk]))


def _transition(
    request: HttpRequest,
    campaign: Campaign,
    action: Callable[[], Any],
    success: str,
    view: str = "change",
) -> HttpResponseRedirect:
    try:
        action()
    except TransitionError as exc:
        messages.error(request, str(exc))
        return _back(campaign, "review" if view == "review" else "change")
    messages.success(request, success)
    return _back(campaign, view)


@require_POST
def submit(request: HttpRequest, pk: int) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.submit_campaign")
    return _transition(
        request,
        campaign,
        lambda: services.submit_for_review(campaign, by=user),
        "Submitted for review. The content and the recipient list are now frozen.",
    )


RECIPIENTS_PER_PAGE = 50


@require_GET
def review(request: HttpRequest, pk: int, site_context: dict[str, Any]) -> HttpResponse:
    """The review screen: summary and checks on top, one sample at a time, the decision bar.

    Everything is a plain link or GET form (sample tabs, phone width, render for an
    address, recipient search), so it works with scripts off.
    """
    campaign, user = campaign_for(request, pk, "campaigns.view_campaign")
    if not campaign.frozen_digest:
        messages.info(request, "Nothing to review: the campaign has not been submitted.")
        return _back(campaign)
    result = build_review(campaign)
    samples = list(result.samples)
    address = request.GET.get("address", "").strip()
    address_note = ""
    if address:
        chosen = Delivery.objects.filter(campaign=campaign, address__iexact=address).first()
        if chosen is None:
            address_note = f"{address} is not among this campaign's recipients."
        elif all(s.delivery.pk != chosen.pk for s in samples):
            samples.append(render_for(campaign, chosen, "chosen by address"))
    try:
        current = int(request.GET.get("sample", "1"))
    except ValueError:
        current = 1
    if address and not address_note:
        current = next(
            i for i, s in enumerate(samples, 1) if s.delivery.address.lower() == address.lower()
        )
    current = min(max(current, 1), max(len(samples), 1))

    query = request.GET.get("q", "").strip()
    recipients = Delivery.objects.filter(campaign=campaign).order_by("id")
    if query:
        recipients = address_search(recipients, query, exact=False)
    page_number = request.GET.get("page", "1")
    page = _recipients_page(recipients, page_number)
    # Why this person may not decide (shown in place of the buttons), None if they may.
    refusal = (
        decision_refusal(user, campaign) if campaign.status == Campaign.Status.IN_REVIEW else None
    )
    context = {
        **site_context,
        "title": f"Review: {campaign.name}",
        "campaign": campaign,
        "opts": Campaign._meta,
        "review": result,
        "samples": samples,
        "current": current,
        "sample": samples[current - 1] if samples else None,
        "phone": request.GET.get("width") == "phone",
        "address": address,
        "address_note": address_note,
        "query": query,
        "recipients": page,
        "digest": campaign.frozen_digest,
        "can_decide": campaign.status == Campaign.Status.IN_REVIEW and refusal is None,
        "decision_refusal": refusal,
        "decision_form": DecisionForm(initial={"digest": campaign.frozen_digest}),
        "remote_images": request.GET.get("remote_images") == "1",
        "typed_count_needed": campaign.recipient_count > settings.APPROVE_TYPED_COUNT_ABOVE,
        # A resubmission: what changed since the last decision, shown above the samples.
        "since": since_last_review(campaign, result)
        if campaign.status == Campaign.Status.IN_REVIEW
        else None,
        "starts_at": campaign.scheduled_at,
    }
    return TemplateResponse(request, "admin/campaigns/campaign/review.html", context)


@dataclass
class RecipientsPage:
    rows: list[Delivery]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def _recipients_page(recipients: QuerySet[Delivery], number: str) -> RecipientsPage:
    """One page of the recipient list without counting the whole ledger (keyset-free, but
    bounded: OFFSET on the (campaign, id) order, and one extra row to know if there is more)."""
    try:
        page = max(int(number), 1)
    except ValueError:
        page = 1
    start = (page - 1) * RECIPIENTS_PER_PAGE
    rows = list(recipients.only("id", "address", "status")[start : start + RECIPIENTS_PER_PAGE + 1])
    return RecipientsPage(
        rows=rows[:RECIPIENTS_PER_PAGE], number=page, has_next=len(rows) > RECIPIENTS_PER_PAGE
    )


def _decide(request: HttpRequest, pk: int, approve: bool) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.approve_campaign")
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The review form was incomplete: " + form.errors.as_text())
        return _back(campaign, "review")
    digest, comment = form.cleaned_data["digest"], form.cleaned_data["comment"]
    if approve and campaign.recipient_count > settings.APPROVE_TYPED_COUNT_ABOVE:
        typed = request.POST.get("confirm_count", "").replace(",", "").replace(" ", "").strip()
        if typed != str(campaign.recipient_count):
            messages.error(
                request,
                f"Not approved: type the recipient count ({campaign.recipient_count}) to confirm "
                "a send this large.",
            )
            return _back(campaign, "review")
    if approve:
        return _transition(
            request,
            campaign,
            lambda: services.approve_campaign(campaign, by=user, digest=digest, comment=comment),
            "Approved. Sending starts at the scheduled time (or now if none is set).",
            view="review",
        )
    return _transition(
        request,
        campaign,
        lambda: services.reject_campaign(campaign, by=user, digest=digest, comment=comment),
        "Rejected: the campaign is back in draft with your comment.",
        # The campaign page, not the review screen: a draft has nothing to review, and
        # landing there added a second message that contradicted this one.
    )


@require_POST
@require_second_factor(fresh=True)
def approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, approve=True)


@require_POST
@require_second_factor()
def reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, approve=False)


@require_POST
def test_send(request: HttpRequest, pk: int) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.send_test_campaign")
    try:
        result = services.send_test(campaign, by=user)
    except TransitionError as exc:
        messages.error(request, str(exc))
        return _back(campaign)
    messages.success(request, "Test sent, one message each, to: " + ", ".join(result.sent))
    return _back(campaign)


class Unbuildable(Exception):
    """This recipient's message cannot be built; the response says why."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def _preview_delivery(
    request: HttpRequest, pk: int, delivery_id: int
) -> tuple[Campaign, Delivery, bytes]:
    campaign, user = campaign_for(request, pk, "campaigns.view_campaign")
    delivery = get_object_or_404(Delivery, pk=delivery_id, campaign=campaign)
    try:
        message = build_message(
            campaign, recipient_for_delivery(delivery), send_time=preview_time(campaign)
        )
    except MESSAGE_ERRORS as exc:
        # Not a server error: this recipient's delivery would fail, and this is why.
        raise Unbuildable(
            HttpResponse(
                f"The message for {delivery.address} cannot be built: {exc}\n",
                status=422,
                content_type="text/plain; charset=utf-8",
            )
        ) from None
    return campaign, delivery, render_eml(message)


@require_GET
def preview_eml(request: HttpRequest, pk: int, delivery_id: int) -> HttpResponse:
    try:
        campaign, delivery, raw = _preview_delivery(request, pk, delivery_id)
    except Unbuildable as unbuildable:
        return unbuildable.response
    response = HttpResponse(raw, content_type="message/rfc822")
    response["Content-Disposition"] = (
        f'attachment; filename="campaign-{campaign.pk}-delivery-{delivery.pk}.eml"'
    )
    return response


def preview_csp(*, remote_images: bool = False) -> str:
    """The policy of a sandboxed HTML part: no script, plugin, form or fetch of any kind;
    images inline only, unless the reviewer asked for remote ones."""
    images = "https: data:" if remote_images else "data:"
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
        "form-action 'none'; base-uri 'none'"
    )


def sandboxed_document(html: str) -> str:
    """An HTML part for an iframe's `srcdoc`, carrying the preview CSP in a meta tag.

    A srcdoc document has no response headers of its own (it inherits the page's policy,
    which allows our own images and styles): the meta tag narrows it to `preview_csp`,
    placed first in <head> so it governs everything the part loads.
    """
    meta = f'<meta http-equiv="Content-Security-Policy" content="{preview_csp()}">'
    head = html.find("<head>")
    if head == -1:
        return meta + html
    at = head + len("<head>")
    return html[:at] + meta + html[at:]


@require_GET
def preview_html(request: HttpRequest, pk: int, delivery_id: int) -> HttpResponse:
    """The HTML part alone, for the review page's sandboxed iframe.

    Staff-authored HTML never renders inside our own pages: it is served on its own, with
    a CSP that forbids scripts, plugins, forms and every fetch, and the `sandbox`
    directive, so even a sanitizer miss runs nothing. Remote images load only when the
    reviewer asks (`?remote_images=1`): otherwise opening the preview would tell whoever
    controls an image URL in the template when the reviewer looked.
    """
    try:
        _, _, raw = _preview_delivery(request, pk, delivery_id)
    except Unbuildable as unbuildable:
        return unbuildable.response
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    part = parsed.get_body(preferencelist=("html",))
    if part is None:
        raise Http404("This message has no HTML part.")
    response = HttpResponse(part.get_content(), content_type="text/html; charset=utf-8")
    remote_images = request.GET.get("remote_images") == "1"
    response["Content-Security-Policy"] = (
        f"sandbox; {preview_csp(remote_images=remote_images)}; frame-ancestors 'self'"
    )
    # The review page (same origin) frames this; X-Frame-Options DENY elsewhere stays.
    response["X-Frame-Options"] = "SAMEORIGIN"
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response


# A campaign not saved yet has no number: the preview builds it as campaign 0, which no
# saved campaign has (ids start at 1) and no unsubscribe token accepts.
UNSAVED_CAMPAIGN_PK = 0
# The name never reaches a message: a preview need not wait for one.
_NOT_IN_THE_MESSAGE = frozenset({"name"})


@require_POST
def compose_preview(
    request: HttpRequest,
    campaign: Campaign | None,
    form_class: type[ModelForm[Campaign]],
    site_context: dict[str, Any],
) -> HttpResponse:
    """The compose form's current content, rendered for one recipient, never saved.

    The caller (the admin) has checked that this user may edit `campaign` (or add one,
    when it is None), and passes the compose page's form class: the posted form is read
    by the same form that saves it, so a template it would refuse on save is refused
    here with the same message (line and column). The instance it fills is built by
    `build_message` and then dropped: no save, no audit event, no digest frozen.
    `preview_recipient` picks whom it is for (see `review.preview_recipient`).

    Answers JSON (the rendered panel and the errors by field) to preview.js, which asks
    for it; otherwise a page of its own, which is what the Preview button, a submit
    button of the compose form, gets with scripts off.
    """
    user = _user(request)
    if campaign is None:
        draft = Campaign(author=user, created_at=timezone.now())
        draft.pk = UNSAVED_CAMPAIGN_PK
    else:
        draft = campaign
    form = form_class(request.POST, instance=draft)
    form.is_valid()
    errors: list[tuple[str, str, str]] = [
        (name, str(form.fields[name].label) if name in form.fields else "Form", str(message))
        for name, messages_ in form.errors.items()
        if name not in _NOT_IN_THE_MESSAGE
        for message in messages_
    ]
    preview = None
    if not errors:
        try:
            preview = build_preview(
                form.instance, by=user, address=request.POST.get("preview_recipient", "")
            )
        except PreviewRefused as refused:
            errors.append(("preview_recipient", "Recipient", str(refused)))
    html = preview.rendering.html if preview is not None else None
    context = {
        "campaign": campaign,
        "preview": preview,
        "errors": errors,
        "srcdoc": sandboxed_document(html) if html is not None else "",
        "unsaved_campaign": campaign is None,
    }
    if "application/json" in request.headers.get("Accept", ""):
        by_field: dict[str, list[str]] = {}
        for name, _, message in errors:
            by_field.setdefault(name, []).append(message)
        return JsonResponse(
            {
                "ok": preview is not None and not preview.rendering.error,
                "errors": by_field,
                "html": render_to_string(
                    "admin/campaigns/campaign/_compose_preview.html", context, request
                ),
            }
        )
    title = f"Preview: {campaign.name}" if campaign is not None else "Preview: new campaign"
    return TemplateResponse(
        request,
        "admin/campaigns/campaign/compose_preview.html",
        {**site_context, **context, "title": title, "opts": Campaign._meta},
    )


@require_GET
def recipients_csv(request: HttpRequest, pk: int) -> HttpResponseBase:
    campaign, user = campaign_for(request, pk, "campaigns.view_campaign")
    record_audit("campaign.recipients_downloaded", actor=user, obj=campaign)
    response = StreamingHttpResponse(
        recipients_csv_rows(campaign), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="campaign-{campaign.pk}-recipients.csv"'
    )
    return response


@require_GET
def compliance_record(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The campaign's compliance record as a zip; the export itself is an audit event."""
    campaign, user = campaign_for(request, pk, "audit.view_auditevent")
    if not user.has_role_perm("campaigns.view_delivery"):
        raise PermissionDenied("Your role does not grant campaigns.view_delivery.")
    # Built in an anonymous temporary file, so a million deliveries never sit in memory.
    target = tempfile.TemporaryFile()
    write_record_zip(campaign, by=user, target=target)
    target.seek(0)
    return FileResponse(
        target,
        as_attachment=True,
        filename=f"campaign-{campaign.pk}-record.zip",
        content_type="application/zip",
    )


@require_GET
def audience_count(request: HttpRequest) -> JsonResponse:
    """Live recipient count for the compose screen, from the filters being edited."""
    user = _user(request)
    if not (
        user.has_role_perm("campaigns.add_campaign")
        or user.has_role_perm("campaigns.change_campaign")
    ):
        raise PermissionDenied
    params = request.GET
    draft = Campaign(
        category=params.get("category") or Campaign.Category.ANNOUNCEMENT,
        audience_locale=params.get("audience_locale", ""),
        audience_attribute_name=params.get("audience_attribute_name", ""),
        audience_attribute_value=params.get("audience_attribute_value", ""),
        audience_addresses=params.get("audience_addresses", ""),
    )
    for name in ("audience_joined_after", "audience_joined_before"):
        value = params.get(name, "").strip()
        if value:
            parsed = parse_datetime(value.replace(" ", "T"))
            if parsed is None:
                return JsonResponse({"error": f"{name}: not a date and time"}, status=400)
            setattr(draft, name, parsed)
    problem = (
        check_attribute_name(draft.audience_attribute_name)
        if draft.audience_attribute_name
        else None
    )
    if problem:
        return JsonResponse({"error": f"attribute name {problem}"}, status=400)
    summary = count_audience(draft)
    return JsonResponse(
        {
            "recipients": summary.recipients,
            "suppressed": summary.suppressed,
            "invalid": summary.invalid,
            "unmatched_list_addresses": summary.unmatched_list_addresses,
        }
    )


DELIVERIES_PER_PAGE = 50


def address_search(rows: QuerySet[Delivery], query: str, *, exact: bool) -> QuerySet[Delivery]:
    """Deliveries whose address is `query` (exact) or contains it, ignoring case.

    Both compare lower(address), the expression the ledger's indexes hold: the unique
    (campaign, lower(address)) index answers an exact address, and on PostgreSQL the
    trigram index (migration 0007) a substring. Django's iexact and icontains would
    compare UPPER(address), which no index holds: a scan of the ledger for a rare term.
    """
    rows = rows.alias(address_lower=Lower("address"))
    if exact:
        return rows.filter(address_lower=query.lower())
    return rows.filter(address_lower__contains=query.lower())


@require_GET
def deliveries(request: HttpRequest, pk: int, site_context: dict[str, Any]) -> HttpResponse:
    """Every recipient of a campaign and where their message stands.

    Pages by id (`?after=<id>`), never by OFFSET or a COUNT of the ledger, so the last page
    of a million rows costs what the first does. A search with an @ is an exact address,
    without one a substring (see `address_search`).
    """
    campaign, user = campaign_for(request, pk, "campaigns.view_campaign")
    stage = request.GET.get("stage", "")
    query = request.GET.get("q", "").strip()
    rows = Delivery.objects.filter(campaign=campaign)
    stages = {key: statuses for key, _, statuses in PIPELINE}
    if stage in stages:
        rows = rows.filter(status__in=stages[stage])
    if query:
        rows = address_search(rows, query, exact="@" in query)
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        after = 0
    page = list(
        rows.filter(id__gt=after)
        .order_by("id")
        .only("id", "address", "status", "attempts", "sent_at", "last_error")[
            : DELIVERIES_PER_PAGE + 1
        ]
    )
    has_next = len(page) > DELIVERIES_PER_PAGE
    page = page[:DELIVERIES_PER_PAGE]
    progress = campaign_progress(campaign)
    context = {
        **site_context,
        "title": f"Recipients: {campaign.name}",
        "campaign": campaign,
        "opts": Campaign._meta,
        "rows": page,
        "has_next": has_next,
        "next_after": page[-1].pk if page else after,
        "after": after,
        "stage": stage,
        "query": query,
        "stages": progress.stages,
        "can_resolve": user.has_role_perm("campaigns.resolve_delivery"),
    }
    return TemplateResponse(request, "admin/campaigns/campaign/deliveries.html", context)


@require_GET
def delivery_message(
    request: HttpRequest, pk: int, delivery_id: int, site_context: dict[str, Any]
) -> HttpResponse:
    """One delivery's message in the browser: headers, text part, sandboxed HTML part.

    Rebuilt by the one builder from the frozen recipient data, as the review screen does
    (the Date header is the preview time, not the moment it went out).
    """
    campaign, _ = campaign_for(request, pk, "campaigns.view_campaign")
    delivery = get_object_or_404(Delivery, pk=delivery_id, campaign=campaign)
    context = {
        **site_context,
        "title": f"Message to {delivery.address}",
        "campaign": campaign,
        "opts": Campaign._meta,
        "delivery": delivery,
        "sample": render_for(campaign, delivery, "this delivery"),
    }
    return TemplateResponse(request, "admin/campaigns/campaign/delivery_message.html", context)


@require_GET
def progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    """The sending panel's numbers, for its poller: read from the counters, never the ledger."""
    user = _user(request)
    if not user.has_role_perm("campaigns.view_campaign"):
        raise PermissionDenied("Your role does not grant campaigns.view_campaign.")
    campaign = get_object_or_404(Campaign, pk=pk)
    response = JsonResponse(campaign_progress(campaign).as_json())
    response["Cache-Control"] = "no-store"
    return response


# --- Operator controls (sending) ---------------------------------------------------------------


@require_POST
def pause(request: HttpRequest, pk: int) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.operate_campaign")
    reason = request.POST.get("reason", "").strip()
    return _transition(
        request,
        campaign,
        lambda: services.pause_campaign(campaign, by=user, reason=reason),
        "Paused. Workers stop before their next message.",
    )


@require_POST
def resume(request: HttpRequest, pk: int) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.operate_campaign")
    return _transition(
        request, campaign, lambda: services.resume_campaign(campaign, by=user), "Resumed."
    )


@require_POST
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.operate_campaign")
    return _transition(
        request,
        campaign,
        lambda: services.cancel_campaign(campaign, by=user),
        "Cancelled. Nothing more will be sent; what was sent stays recorded.",
    )


def _resolve(request: HttpRequest, pk: int, *, resend: bool) -> HttpResponse:
    campaign, user = campaign_for(request, pk, "campaigns.resolve_delivery")
    raw_ids = request.POST.getlist("delivery")
    ids = [int(value) for value in raw_ids if value.isdigit()]
    if not ids:
        messages.error(request, "Choose at least one delivery in the unknown state.")
        return _back(campaign)
    done = 0
    for delivery in Delivery.objects.filter(campaign=campaign, pk__in=ids):
        try:
            services.resolve_unknown(delivery, by=user, resend=resend)
            done += 1
        except TransitionError as exc:
            messages.error(request, str(exc))
    verb = "queued to send again" if resend else "marked sent"
    messages.success(request, f"{done} deliveries {verb}.")
    return _back(campaign)


@require_POST
def resend(request: HttpRequest, pk: int) -> HttpResponse:
    return _resolve(request, pk, resend=True)


@require_POST
def mark_sent(request: HttpRequest, pk: int) -> HttpResponse:
    return _resolve(request, pk, resend=False)


@require_second_factor()
def emergency_stop(request: HttpRequest, site_context: dict[str, Any]) -> HttpResponse:
    """GET shows the switch; POST halts or releases all sending (Admin and Compliance)."""
    user = _user(request)
    if not user.has_role_perm("campaigns.emergency_stop"):
        raise PermissionDenied("Your role does not grant the emergency stop.")
    if request.method == "POST":
        halt = request.POST.get("action") == "halt"
        try:
            services.set_emergency_stop(
                by=user, halted=halt, reason=request.POST.get("reason", "").strip()
            )
        except TransitionError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                "All sending is halted." if halt else "Sending released: campaigns continue.",
            )
        return HttpResponseRedirect(reverse("campaigns_emergency_stop"))
    if request.method != "GET":
        return HttpResponse(status=405)
    context = {
        **site_context,
        "title": "Emergency stop",
        "switch": SendingSwitch.get(),
        "sending": Campaign.objects.filter(status=Campaign.Status.SENDING).count(),
    }
    return TemplateResponse(request, "admin/campaigns/emergency_stop.html", context)
