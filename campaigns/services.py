"""Campaign work that spans models or has side effects: compose, submit, review, test send.

Views, forms and the admin call these functions; they hold the rules. Every transition
locks the campaign row, checks its state, records who and when, and writes an audit
event in the same transaction.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from django.core.mail import EmailMessage, get_connection
from django.db import connection, transaction
from django.db.models import CharField, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Lower
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address, single_address_error
from audit.chain import record_audit

from .models import (
    Approval,
    Campaign,
    Delivery,
    IllegalTransition,
    StaleDigest,
    TransitionError,
    TwoPersonRuleViolation,
)
from .rendering import (
    audience_hash,
    build_message,
    content_digest,
    recipient_data_for_user,
    recipient_for_test,
)
from .suppressions import suppressed_addresses, suppressed_queryset

logger = logging.getLogger(__name__)

MATERIALIZE_CHUNK = 2000


class PermissionRefused(TransitionError):
    """The user's role does not allow this action."""


# --- Audience ------------------------------------------------------------------------------


def parse_address_list(text: str) -> tuple[list[str], list[str]]:
    """Parse an uploaded address list: one address per line, blank lines and #comments ignored.

    Returns (normalized addresses, errors); each error names its line.
    """
    addresses: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = single_address_error(line)
        if problem:
            errors.append(f"line {number}: {line!r} {problem}")
        else:
            addresses.append(normalize_address(line))
    return addresses, errors


def audience_queryset(campaign: Campaign) -> QuerySet[User]:
    """Active audience members matching the campaign's filters (not the uploaded list)."""
    qs = User.objects.audience()
    if campaign.audience_locale:
        qs = qs.filter(locale=campaign.audience_locale)
    if campaign.audience_joined_after:
        qs = qs.filter(date_joined__gte=campaign.audience_joined_after)
    if campaign.audience_joined_before:
        qs = qs.filter(date_joined__lt=campaign.audience_joined_before)
    if campaign.audience_attribute_name:
        # KeyTextTransform takes the key literally: a name like "contains" or "a__b" cannot
        # turn into a lookup or a path.
        qs = qs.annotate(
            _attribute=Cast(
                KeyTextTransform(campaign.audience_attribute_name, "attributes"), CharField()
            )
        ).filter(_attribute=campaign.audience_attribute_value)
    return qs.order_by("id")


@dataclass
class AudienceSummary:
    recipients: int = 0
    suppressed: int = 0
    invalid: int = 0
    unmatched_list_addresses: int = 0


def iter_audience(
    campaign: Campaign, summary: AudienceSummary | None = None
) -> Iterator[Mapping[str, Any]]:
    """Yield the recipients of `campaign` in user-id order, as value dicts.

    Suppressed addresses and addresses the validator refuses are left out and counted.
    """
    summary = summary if summary is not None else AudienceSummary()
    wanted: set[str] | None = None
    if campaign.audience_addresses.strip():
        wanted = set(parse_address_list(campaign.audience_addresses)[0])
    suppressed = suppressed_addresses(campaign.category)
    matched: set[str] = set()
    rows = audience_queryset(campaign).values(
        "id", "email", "first_name", "last_name", "locale", "attributes"
    )
    for row in rows.iterator(chunk_size=MATERIALIZE_CHUNK):
        address = normalize_address(row["email"])
        if wanted is not None:
            if address not in wanted:
                continue
            matched.add(address)
        if single_address_error(row["email"]):
            summary.invalid += 1
            continue
        if address in suppressed:
            summary.suppressed += 1
            continue
        summary.recipients += 1
        yield row
    if wanted is not None:
        summary.unmatched_list_addresses = len(wanted - matched)


def count_audience(campaign: Campaign) -> AudienceSummary:
    """The live count for the compose screen. Without an uploaded list it is two COUNT
    queries (addresses were validated when they were imported); with one, a scan."""
    summary = AudienceSummary()
    if campaign.audience_addresses.strip():
        for _ in iter_audience(campaign, summary):
            pass
        return summary
    qs = audience_queryset(campaign)
    total = qs.count()
    summary.suppressed = (
        qs.annotate(_address=Lower("email"))
        .filter(_address__in=suppressed_queryset(campaign.category).values("address"))
        .count()
    )
    summary.recipients = total - summary.suppressed
    return summary


# --- Permissions -----------------------------------------------------------------------------


def require_role(user: User, perm: str, action: str) -> None:
    """Refuse unless one of the user's roles grants `perm` (superuser status grants nothing)."""
    if not user.has_role_perm(perm):
        raise PermissionRefused(f"Your role does not allow you to {action}.")


def require_second_person(campaign: Campaign, reviewer: User) -> None:
    """The two-person rule: the reviewer authored, edited and submitted nothing of this campaign."""
    if reviewer.pk == campaign.author_id:
        raise TwoPersonRuleViolation("You wrote this campaign; a second person must review it.")
    if reviewer.pk in {campaign.submitted_by_id, campaign.edited_by_id}:
        raise TwoPersonRuleViolation(
            "You edited or submitted this campaign; a second person must review it."
        )
    if campaign.contributors.filter(pk=reviewer.pk).exists():
        raise TwoPersonRuleViolation(
            "You contributed to this campaign; a second person must review it."
        )


def can_decide(user: User, campaign: Campaign) -> bool:
    if not user.has_role_perm("campaigns.approve_campaign"):
        return False
    try:
        require_second_person(campaign, user)
    except TwoPersonRuleViolation:
        return False
    return True


# --- Compose --------------------------------------------------------------------------------


def _lock(campaign: Campaign) -> Campaign:
    return Campaign.objects.select_for_update().get(pk=campaign.pk)


def create_campaign(campaign: Campaign, *, by: User) -> Campaign:
    require_role(by, "campaigns.add_campaign", "create campaigns")
    with transaction.atomic():
        campaign.author = by
        campaign.status = Campaign.Status.DRAFT
        campaign.save()
        campaign.contributors.add(by)
        record_audit("campaign.created", actor=by, obj=campaign, data={"name": campaign.name})
    return campaign


def edit_campaign(campaign: Campaign, *, by: User, changed: Iterable[str]) -> Campaign:
    """Save an edit. An edit of submitted or approved content voids it: back to draft.

    `campaign` carries the new field values (unsaved); `changed` names the edited fields.
    """
    require_role(by, "campaigns.change_campaign", "edit campaigns")
    changed = [name for name in changed if name in Campaign.CONTENT_FIELDS]
    with transaction.atomic():
        current = _lock(campaign)
        current.require_status(
            Campaign.Status.DRAFT, Campaign.Status.IN_REVIEW, Campaign.Status.APPROVED
        )
        previous_status = current.status
        campaign.status = current.status
        campaign.edited_by = by
        campaign.edited_at = timezone.now()
        data: dict[str, Any] = {"fields": sorted(changed)}
        if previous_status != Campaign.Status.DRAFT and changed:
            _return_to_draft(campaign)
            data["voided"] = previous_status
        campaign.save()
        campaign.contributors.add(by)
        record_audit("campaign.edited", actor=by, obj=campaign, data=data)
    return campaign


def _return_to_draft(campaign: Campaign) -> None:
    """Void the submission and any approval; the pending recipient set is re-made at the next submit."""
    Approval.objects.filter(
        campaign=campaign, decision=Approval.Decision.APPROVED, voided_at__isnull=True
    ).update(voided_at=timezone.now())
    Delivery.objects.filter(campaign=campaign, status=Delivery.Status.PENDING).delete()
    campaign.status = Campaign.Status.DRAFT
    campaign.frozen_digest = ""
    campaign.approved_digest = ""
    campaign.audience_hash = ""
    campaign.recipient_count = 0


# --- Submit ---------------------------------------------------------------------------------


def _materialize(campaign: Campaign) -> tuple[int, str, AudienceSummary]:
    """Freeze the audience into pending Delivery rows; return (count, audience hash, summary)."""
    summary = AudienceSummary()
    buffer: list[tuple[Any, ...]] = []
    insert = _delivery_inserter()

    def flush() -> None:
        insert(buffer)
        buffer.clear()

    def rows() -> Iterator[tuple[int, str, dict[str, str]]]:
        for row in iter_audience(campaign, summary):
            data = recipient_data_for_user(
                User(
                    email=row["email"],
                    first_name=row["first_name"],
                    last_name=row["last_name"],
                    locale=row["locale"],
                    attributes=row["attributes"] or {},
                )
            )
            buffer.append((campaign.pk, row["id"], row["email"], data))
            if len(buffer) >= MATERIALIZE_CHUNK:
                flush()
            yield row["id"], row["email"], data

    digest = audience_hash(rows())
    flush()
    return summary.recipients, digest, summary


def _delivery_inserter() -> Callable[[list[tuple[Any, ...]]], None]:
    """A fast INSERT of new pending deliveries: (campaign_id, user_id, address, data) rows.

    bulk_create builds a model instance per row, which is most of the time of submitting
    100,000 recipients. This writes the same columns with one executemany per chunk; the
    database's own constraints (bare address, one row per user and per address) still
    check every row.
    """
    meta = Delivery._meta
    json_field = meta.get_field("recipient_data")
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    fixed: dict[str, Any] = {
        "status": Delivery.Status.PENDING,
        "attempts": 0,
        "last_error": "",
        "message_id": "",
        "provider_message_id": "",
        "created_at": now,
        "updated_at": now,
    }
    columns = ["campaign_id", "user_id", "address", "recipient_data", *fixed]
    quote = connection.ops.quote_name
    column_of = {field.attname: field.column for field in meta.concrete_fields}
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(meta.db_table),
        ", ".join(quote(column_of[name]) for name in columns),
        ", ".join(["%s"] * len(columns)),
    )
    constant = tuple(fixed.values())

    def insert(rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        params = [
            (
                campaign_id,
                user_id,
                address,
                json_field.get_db_prep_save(data, connection),
                *constant,
            )
            for campaign_id, user_id, address, data in rows
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)

    return insert


def submit_for_review(campaign: Campaign, *, by: User) -> Campaign:
    require_role(by, "campaigns.submit_campaign", "submit campaigns for review")
    with transaction.atomic():
        campaign = _lock(campaign)
        campaign.require_status(Campaign.Status.DRAFT)
        problems = submit_problems(campaign)
        if problems:
            raise IllegalTransition("Cannot submit: " + "; ".join(problems))
        Delivery.objects.filter(campaign=campaign, status=Delivery.Status.PENDING).delete()
        count, hashed, summary = _materialize(campaign)
        if count == 0:
            raise IllegalTransition("Cannot submit: the audience is empty.")
        campaign.recipient_count = count
        campaign.audience_hash = hashed
        campaign.frozen_digest = content_digest(campaign)
        campaign.status = Campaign.Status.IN_REVIEW
        campaign.submitted_by = by
        campaign.submitted_at = timezone.now()
        campaign.save(
            update_fields=[
                "recipient_count",
                "audience_hash",
                "frozen_digest",
                "status",
                "submitted_by",
                "submitted_at",
            ]
        )
        campaign.contributors.add(by)
        record_audit(
            "campaign.submitted",
            actor=by,
            obj=campaign,
            data={
                "digest": campaign.frozen_digest,
                "recipients": count,
                "audience_hash": hashed,
                "suppressed": summary.suppressed,
                "invalid": summary.invalid,
            },
        )
        transaction.on_commit(partial(notify_reviewers, campaign.pk))
    return campaign


def submit_problems(campaign: Campaign) -> list[str]:
    """What stops a campaign from being submitted (templates, unsubscribe, postal address)."""
    from .forms import template_problems

    return template_problems(campaign)


# --- Review ---------------------------------------------------------------------------------


def preview_time(campaign: Campaign) -> datetime:
    """The send time used by previews: pinned, so the same page shows the same bytes."""
    return campaign.submitted_at or campaign.edited_at or campaign.created_at


def require_current_digest(campaign: Campaign, digest: str) -> None:
    current = content_digest(campaign)
    if not digest or digest != campaign.frozen_digest or digest != current:
        raise StaleDigest(
            "The campaign changed since this review page was loaded; reload it and review again."
        )


def approve_campaign(campaign: Campaign, *, by: User, digest: str, comment: str = "") -> Approval:
    require_role(by, "campaigns.approve_campaign", "approve campaigns")
    from .review import build_review

    with transaction.atomic():
        campaign = _lock(campaign)
        campaign.require_status(Campaign.Status.IN_REVIEW)
        require_second_person(campaign, by)
        require_current_digest(campaign, digest)
        review = build_review(campaign)
        if not review.checks_pass:
            failed = "; ".join(c.label for c in review.checks if not c.ok and c.blocking)
            raise IllegalTransition(f"Pre-flight checks fail: {failed}.")
        approval = Approval.objects.create(
            campaign=campaign,
            reviewer=by,
            decision=Approval.Decision.APPROVED,
            comment=comment,
            digest=digest,
            recipient_count=campaign.recipient_count,
            audience_hash=campaign.audience_hash,
            samples=review.stored_samples(),
        )
        campaign.status = Campaign.Status.APPROVED
        campaign.approved_by = by
        campaign.approved_at = timezone.now()
        campaign.approved_digest = digest
        campaign.save(update_fields=["status", "approved_by", "approved_at", "approved_digest"])
        record_audit(
            "campaign.approved",
            actor=by,
            obj=campaign,
            data={
                "digest": digest,
                "approval": approval.pk,
                "recipients": campaign.recipient_count,
            },
        )
        transaction.on_commit(partial(notify_author, campaign.pk, approval.pk))
        after_approval(campaign, by=by)
    return approval


def after_approval(campaign: Campaign, *, by: User) -> None:
    """Hook for the sender: start sending now or wait for the scheduled time."""
    from . import sending

    sending.launch_if_due(campaign, by=by)


def reject_campaign(campaign: Campaign, *, by: User, digest: str, comment: str) -> Approval:
    require_role(by, "campaigns.approve_campaign", "reject campaigns")
    if not comment.strip():
        raise IllegalTransition("A rejection needs a comment telling the author what to change.")
    with transaction.atomic():
        campaign = _lock(campaign)
        campaign.require_status(Campaign.Status.IN_REVIEW)
        require_second_person(campaign, by)
        require_current_digest(campaign, digest)
        approval = Approval.objects.create(
            campaign=campaign,
            reviewer=by,
            decision=Approval.Decision.REJECTED,
            comment=comment.strip(),
            digest=digest,
            recipient_count=campaign.recipient_count,
            audience_hash=campaign.audience_hash,
        )
        _return_to_draft(campaign)
        campaign.rejected_by = by
        campaign.rejected_at = timezone.now()
        campaign.save(
            update_fields=[
                "status",
                "frozen_digest",
                "approved_digest",
                "audience_hash",
                "recipient_count",
                "rejected_by",
                "rejected_at",
            ]
        )
        record_audit(
            "campaign.rejected",
            actor=by,
            obj=campaign,
            data={"digest": digest, "approval": approval.pk, "comment": approval.comment},
        )
        transaction.on_commit(partial(notify_author, campaign.pk, approval.pk))
    return approval


# --- Test send ------------------------------------------------------------------------------


@dataclass
class TestSendResult:
    sent: list[str] = field(default_factory=list)


def send_test(campaign: Campaign, *, by: User) -> TestSendResult:
    """Send the campaign, rendered for `by`, to each of their seed addresses: one message each."""
    require_role(by, "campaigns.send_test_campaign", "send tests")
    if campaign.status == Campaign.Status.CANCELLED:
        raise IllegalTransition("A cancelled campaign cannot be test-sent.")
    problems = submit_problems(campaign)
    if problems:
        raise IllegalTransition("Cannot send a test: " + "; ".join(problems))
    result = TestSendResult()
    now = timezone.now()
    messages = [
        build_message(campaign, recipient_for_test(campaign, by, address), send_time=now)
        for address in by.seed_address_list()
    ]
    connection = get_connection()
    with connection:
        for message in messages:
            # One call per message: a refusal of one never takes another with it.
            connection.send_messages([message])
            result.sent.append(message.expected_recipient)
    record_audit("campaign.test_sent", actor=by, obj=campaign, data={"to": result.sent})
    return result


# --- Notifications --------------------------------------------------------------------------


def _send_one_each(subject: str, body: str, recipients: Iterable[str]) -> None:
    """Staff notifications: one message per person, through the same guarded backend."""
    connection = get_connection(fail_silently=False)
    for address in sorted(set(recipients)):
        try:
            connection.send_messages([EmailMessage(subject, body, to=[address])])
        except Exception:
            # A notification failure must not undo or block the transition it reports.
            logger.exception("notification to %s failed", address)


def _campaign_link(campaign: Campaign, name: str) -> str:
    from django.conf import settings

    return settings.PUBLIC_BASE_URL + reverse(name, args=[campaign.pk])


def notify_reviewers(campaign_id: int) -> None:
    campaign = Campaign.objects.select_related("submitted_by").get(pk=campaign_id)
    reviewers = User.objects.filter(
        is_active=True, is_staff=True, groups__name="Compliance"
    ).exclude(Q(pk=campaign.author_id) | Q(pk__in=campaign.contributors.values("pk")))
    _send_one_each(
        f"[Countersign] Review requested: {campaign.name}",
        f"{campaign.submitted_by} submitted “{campaign.name}” for review "
        f"({campaign.recipient_count} recipients).\n\nReview it: "
        f"{_campaign_link(campaign, 'admin:campaigns_campaign_review')}\n",
        reviewers.values_list("email", flat=True),
    )


def notify_author(campaign_id: int, approval_id: int) -> None:
    campaign = Campaign.objects.select_related("author").get(pk=campaign_id)
    approval = Approval.objects.select_related("reviewer").get(pk=approval_id)
    verdict = approval.get_decision_display().lower()
    body = f"{approval.reviewer} {verdict} “{campaign.name}”."
    if approval.comment:
        body += f"\n\nComment:\n{approval.comment}"
    body += f"\n\n{_campaign_link(campaign, 'admin:campaigns_campaign_change')}\n"
    _send_one_each(f"[Countersign] {campaign.name}: {verdict}", body, [campaign.author.email])


# --- Recipient list -------------------------------------------------------------------------


class _Echo:
    def write(self, value: str) -> str:
        return value


def recipients_csv_rows(campaign: Campaign) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(["delivery_id", "user_id", "address", "status"])
    rows = Delivery.objects.filter(campaign=campaign).order_by("id")
    for delivery_id, user_id, address, status in rows.values_list(
        "id", "user_id", "address", "status"
    ).iterator(chunk_size=MATERIALIZE_CHUNK):
        yield writer.writerow([delivery_id, user_id, address, status])
