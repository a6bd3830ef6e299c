"""The operator's actions: compose, submit, review, test-send, and control a send.

Views, forms and the admin call these functions; they hold the rules. Every change of a
campaign's state goes through `transitions` (role check, row lock, state check, who and
when, one audit event, one transaction); this module adds what each action means beyond
that: freezing the audience, binding an approval to its digest, voiding it on an edit,
starting the worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from django.core.mail import get_connection
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.seeds import seed_address_problems
from audit.chain import record_audit

from .audience import freeze_audience
from .digests import content_digest, sample_sha256
from .models import (
    Approval,
    Campaign,
    Delivery,
    IllegalTransition,
    SendingSwitch,
    StaleDigest,
)
from .notifications import notify_author, notify_reviewers
from .permissions import require_role, require_second_person
from .rendering import build_message, recipient_for_test, template_problems
from .review import build_review
from .transitions import Change, transition, transition_if
from .worker import complete_if_done, dispatch_on_commit, launch_if_due

# What voiding a submission resets; saved with the transition that voids it.
_FROZEN = {"frozen_digest": "", "approved_digest": "", "audience_hash": "", "recipient_count": 0}


# --- Compose --------------------------------------------------------------------------------


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
    Saving without a change to the content changes nothing and records nothing.
    """
    changed = sorted(name for name in changed if name in Campaign.CONTENT_FIELDS)
    if not changed:
        require_role(by, "campaigns.change_campaign", "edit campaigns")
        return campaign
    with transition(campaign, "edit", by=by) as change:
        change.set(**{name: getattr(campaign, name) for name in changed})
        change.data["fields"] = changed
        if change.previous != Campaign.Status.DRAFT:
            _void_submission(change)
            change.data["voided"] = change.previous
        change.campaign.contributors.add(by)
    return change.campaign


def _void_submission(change: Change) -> None:
    """Void the submission and any approval; the pending recipient set is re-made at the next submit."""
    campaign = change.campaign
    Approval.objects.filter(
        campaign=campaign, decision=Approval.Decision.APPROVED, voided_at__isnull=True
    ).update(voided_at=timezone.now())
    Delivery.objects.filter(campaign=campaign, status=Delivery.Status.PENDING).delete()
    change.set(**_FROZEN)


# --- Submit and review ----------------------------------------------------------------------


def submit_for_review(campaign: Campaign, *, by: User) -> Campaign:
    """Freeze the content and the audience; the reviewer approves exactly this."""
    with transition(campaign, "submit", by=by) as change:
        campaign = change.campaign
        problems = template_problems(campaign)
        if problems:
            raise IllegalTransition("Cannot submit: " + "; ".join(problems))
        Delivery.objects.filter(campaign=campaign, status=Delivery.Status.PENDING).delete()
        count, hashed, summary = freeze_audience(campaign)
        if count == 0:
            raise IllegalTransition("Cannot submit: the audience is empty.")
        change.set(recipient_count=count, audience_hash=hashed)
        change.set(frozen_digest=content_digest(campaign))
        campaign.contributors.add(by)
        change.data.update(
            digest=campaign.frozen_digest,
            recipients=count,
            audience_hash=hashed,
            suppressed=summary.suppressed,
            invalid=summary.invalid,
        )
        transaction.on_commit(partial(notify_reviewers, campaign.pk))
    return campaign


def require_current_digest(campaign: Campaign, digest: str) -> None:
    current = content_digest(campaign)
    if not digest or digest != campaign.frozen_digest or digest != current:
        raise StaleDigest(
            "The campaign changed since this review page was loaded; reload it and review again."
        )


def approve_campaign(campaign: Campaign, *, by: User, digest: str, comment: str = "") -> Approval:
    """Approve the digest the reviewer saw; sending starts now or at the scheduled time."""
    # One transaction: the approval, and the start of sending if its time has come.
    with transaction.atomic():
        with transition(campaign, "approve", by=by) as change:
            campaign = change.campaign
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
            change.set(approved_digest=digest)
            # The chain itself holds each sample's hash, so a stored sample altered later
            # in the database (not only in an export) is caught by the record's verifier.
            change.data.update(
                digest=digest,
                approval=approval.pk,
                recipients=campaign.recipient_count,
                sample_sha256=[sample_sha256(s["eml"]) for s in approval.samples],
            )
            transaction.on_commit(partial(notify_author, campaign.pk, approval.pk))
        launch_if_due(change.campaign, by=by)
    return approval


def reject_campaign(campaign: Campaign, *, by: User, digest: str, comment: str) -> Approval:
    """Send the campaign back to draft with a comment telling the author what to change."""
    if not comment.strip():
        require_role(by, "campaigns.approve_campaign", "reject campaigns")
        raise IllegalTransition("A rejection needs a comment telling the author what to change.")
    with transition(campaign, "reject", by=by) as change:
        campaign = change.campaign
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
            # What the reviewer saw and refused: the resubmission is diffed against it.
            samples=build_review(campaign).stored_samples(),
        )
        _void_submission(change)
        change.data.update(digest=digest, approval=approval.pk, comment=approval.comment)
        transaction.on_commit(partial(notify_author, campaign.pk, approval.pk))
    return approval


# --- Test send ------------------------------------------------------------------------------


@dataclass
class TestSendResult:
    sent: list[str] = field(default_factory=list)


TEST_SUBJECT_PREFIX = "[TEST] "


def send_test(campaign: Campaign, *, by: User) -> TestSendResult:
    """Send the campaign, rendered for `by`, to each of their seed addresses: one message each."""
    require_role(by, "campaigns.send_test_campaign", "send tests")
    if campaign.status == Campaign.Status.CANCELLED:
        raise IllegalTransition("A cancelled campaign cannot be test-sent.")
    problems = template_problems(campaign)
    if problems:
        raise IllegalTransition("Cannot send a test: " + "; ".join(problems))
    seeds = by.seed_address_list()
    # Checked again here, not only when the seeds were saved: the rules may have tightened
    # since, and an unreviewed draft must never reach an audience member.
    refused = seed_address_problems(seeds)
    if refused:
        raise IllegalTransition("Cannot send a test: " + " ".join(refused))
    result = TestSendResult()
    now = timezone.now()
    messages = [
        build_message(campaign, recipient_for_test(campaign, by, address), send_time=now, test=True)
        for address in seeds
    ]
    for message in messages:
        # A test must never pass for the real thing in an inbox.
        message.subject = TEST_SUBJECT_PREFIX + str(message.subject)
    connection = get_connection()
    with connection:
        for message in messages:
            # One call per message: a refusal of one never takes another with it.
            connection.send_messages([message])
            result.sent.append(message.expected_recipient)
    record_audit("campaign.test_sent", actor=by, obj=campaign, data={"to": result.sent})
    return result


# --- Operator controls ----------------------------------------------------------------------


def pause_campaign(campaign: Campaign, *, by: User, reason: str = "") -> Campaign:
    """Workers stop before their next message; what they hold goes back to pending."""
    with transition(campaign, "pause", by=by) as change:
        change.set(pause_reason=reason or f"paused by {by}")
        change.data["reason"] = change.campaign.pause_reason
    return change.campaign


def resume_campaign(campaign: Campaign, *, by: User) -> Campaign:
    """Continue sending, but only what was approved: the digest must still match."""
    with transition(campaign, "resume", by=by) as change:
        campaign = change.campaign
        if content_digest(campaign) != campaign.approved_digest:
            raise IllegalTransition(
                "The content no longer matches the approved digest; it must be reviewed again."
            )
        change.set(pause_reason="")
        if campaign.sending_started_at is None:
            change.set(sending_started_at=timezone.now())
        dispatch_on_commit(campaign.pk)
    return campaign


def cancel_campaign(campaign: Campaign, *, by: User) -> Campaign:
    """Nothing more is sent; what was sent stays recorded."""
    with transition(campaign, "cancel", by=by) as change:
        change.data["skipped"] = Delivery.objects.filter(
            campaign=change.campaign,
            status__in=[Delivery.Status.PENDING, Delivery.Status.RETRY_WAIT],
        ).update(
            status=Delivery.Status.SKIPPED,
            last_error="campaign cancelled",
            updated_at=timezone.now(),
        )
    return change.campaign


def resolve_unknown(delivery: Delivery, *, by: User, resend: bool) -> Delivery:
    """An operator's decision on an `unknown` delivery: send again, or accept it as sent."""
    require_role(by, "campaigns.resolve_delivery", "resolve unknown deliveries")
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.status != Delivery.Status.UNKNOWN:
            raise IllegalTransition(
                f"{delivery.address} is {delivery.get_status_display().lower()}, not unknown."
            )
        new_status = Delivery.Status.PENDING if resend else Delivery.Status.SENT
        Delivery.objects.filter(pk=delivery.pk).update(
            status=new_status,
            claim_token=None,
            lease_expires_at=None,
            updated_at=timezone.now(),
            last_error=f"{'resend' if resend else 'marked sent'} by {by}",
        )
        record_audit(
            "delivery.resend" if resend else "delivery.marked_sent",
            actor=by,
            obj=delivery,
            data={"campaign_id": delivery.campaign_id, "address": delivery.address},
        )
        if resend:
            transition_if(delivery.campaign_id, "reopen", by=by, data={"delivery_id": delivery.pk})
            dispatch_on_commit(delivery.campaign_id)
        else:
            transaction.on_commit(partial(complete_if_done, delivery.campaign_id))
    delivery.refresh_from_db()
    return delivery


def set_emergency_stop(*, by: User, halted: bool, reason: str = "") -> SendingSwitch:
    """Halt (or release) all sending on every worker, before their next message."""
    require_role(by, "campaigns.emergency_stop", "use the emergency stop")
    with transaction.atomic():
        SendingSwitch.get()
        switch = SendingSwitch.objects.select_for_update().get(pk=1)
        switch.halted = halted
        switch.changed_by, switch.changed_at = by, timezone.now()
        switch.reason = reason
        switch.save()
        record_audit(
            "sending.halted" if halted else "sending.released",
            actor=by,
            obj=switch,
            data={"reason": reason},
        )
        if not halted:
            for campaign_id in Campaign.objects.filter(status=Campaign.Status.SENDING).values_list(
                "id", flat=True
            ):
                dispatch_on_commit(campaign_id)
    return switch
