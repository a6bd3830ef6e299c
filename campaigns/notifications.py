"""Staff notifications: review requested, approved or rejected. One message per person.

They go through the same guarded backend as campaign mail, and are sent after the
transition they report has committed; a failure is logged, never undoes the transition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db.models import Q
from django.urls import reverse

from accounts.models import User

from .models import Approval, Campaign

logger = logging.getLogger(__name__)


def _send_one_each(subject: str, body: str, recipients: Iterable[str]) -> None:
    connection = get_connection(fail_silently=False)
    for address in sorted(set(recipients)):
        try:
            connection.send_messages([EmailMessage(subject, body, to=[address])])
        except Exception:
            # A notification failure must not undo or block the transition it reports.
            logger.exception("notification to %s failed", address)


def _campaign_link(campaign: Campaign, name: str) -> str:
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
