"""Provider tracking events: store each once, settle the delivery, suppress where needed.

anymail's tracking views (mounted at /anymail/, e.g. POST /anymail/postmark/tracking/)
check the HTTP basic-auth secret themselves: `AnymailBasicAuthMixin.validate_request`
compares the request's credentials with every ANYMAIL["WEBHOOK_SECRET"] entry using
`constant_time_compare` and raises `AnymailWebhookValidationFailure` (a
SuspiciousOperation, so Django answers 400) before any event is parsed or signalled.
With no secret configured anymail only warns and lets every request through, so this
module closes that gap twice: the receiver refuses events when DEBUG is off and no secret
is set, and a system check (countersign.E020) fails a deployment that sends through an
anymail provider without one.

This module must be imported at startup (campaigns.apps.CampaignsConfig.ready) so that
the receiver is connected and the check registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.signals import EventType, RejectReason, tracking
from anymail.utils import get_anymail_setting
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from django.conf import settings
from django.core import checks
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils import timezone

from accounts.validators import normalize_address
from audit.chain import record_audit

from .models import Delivery, ProviderEvent, Suppression
from .suppressions import add_suppression

logger = logging.getLogger(__name__)


class MalformedWebhook(SuspiciousOperation):
    """A webhook that passed the secret check but whose body cannot be read.

    A SuspiciousOperation, so Django answers 400 (logged under django.security), never a
    500 with a traceback; the provider learns the request itself was wrong.
    """


class PostmarkTrackingView(PostmarkTrackingWebhookView):  # type: ignore[misc]  # anymail is untyped
    """anymail's Postmark tracking webhook, answering a malformed body with 400.

    The secret is checked first, as in anymail; only then is the body parsed.
    """

    def parse_events(self, request: HttpRequest) -> list[Any]:
        try:
            events: list[Any] = super().parse_events(request)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MalformedWebhook(f"malformed Postmark webhook body: {error!r}") from None
        return events


S = Delivery.Status

# How far along a delivery is, as far as the provider's events tell. An event may only move
# a row forward: a late "delivered" must never turn a bounced or complained row back.
# `unknown` rows are settled by any event (the provider evidently had the message).
_PROGRESS: dict[str, int] = {
    S.SENT: 0,
    S.UNKNOWN: 0,
    S.DELIVERED: 1,
    S.FAILED: 1,
    S.BOUNCED: 2,
    S.COMPLAINED: 3,
}
# Rows in any other status (pending, claimed, sending, retry_wait, skipped, blocked) belong
# to the sender. In particular a `sending` row is left alone: the worker records its
# outcome with a fenced UPDATE that expects `sending`, and moving the row under it would
# turn a normal send into a fencing failure. Such events are still stored and linked.


@dataclass(frozen=True)
class Effect:
    """What one tracking event means for the ledger and the suppression list."""

    status: str | None = None
    suppress: str | None = None
    # The provider had the message: enough to settle an `unknown` row as `sent`.
    accepted: bool = True


def webhook_secret_configured() -> bool:
    # Same lookup as anymail's views: ANYMAIL["WEBHOOK_SECRET"] or ANYMAIL_WEBHOOK_SECRET.
    return bool(get_anymail_setting("webhook_secret", default=None))


@checks.register(checks.Tags.security)
def check_webhook_secret(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An anymail transport in production needs the webhook secret.

    Without it the tracking URLs would accept forged events (anyone could suppress every
    member or mark deliveries bounced); the receiver below refuses them instead, so the
    provider's real events would be lost. Either way it is a deployment error.
    """
    transport = str(getattr(settings, "EMAIL_TRANSPORT", ""))
    if settings.DEBUG or webhook_secret_configured() or not transport.startswith("anymail."):
        return []
    return [
        checks.Error(
            "ANYMAIL_WEBHOOK_SECRET is not set, so the provider's tracking webhooks "
            "(bounces, complaints, unsubscribes) would be refused.",
            hint="Set ANYMAIL_WEBHOOK_SECRET to a random 'user:password' pair and use the same "
            "credentials in the provider's webhook URL (https://user:password@host/anymail/...).",
            id="countersign.E020",
        )
    ]


@receiver(tracking, dispatch_uid="countersign.campaigns.webhooks.on_tracking_event")
def on_tracking_event(sender: Any, event: Any, esp_name: str, **kwargs: Any) -> None:
    if not settings.DEBUG and not webhook_secret_configured():
        # anymail let the request through because no secret is configured; never act on an
        # unauthenticated event in production. 400, nothing stored.
        raise AnymailWebhookValidationFailure(
            "Tracking webhook refused: ANYMAIL_WEBHOOK_SECRET is not configured."
        )
    record_provider_event(event, esp_name=esp_name)


def record_provider_event(event: Any, *, esp_name: str) -> ProviderEvent | None:
    """Store one anymail tracking event and apply it; None if it was already recorded.

    Runs in one transaction: the event row, the delivery update, the suppression and
    their audit events commit together or not at all (a failure answers 500 and the
    provider retries). A replay hits the unique (provider, event_id) constraint and
    changes nothing.
    """
    payload = _jsonable(event.esp_event)
    event_id = _event_id(event.event_id, payload)
    recipient = normalize_address(str(event.recipient or ""))[:254]
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    with transaction.atomic():
        delivery = find_delivery(
            metadata=metadata, message_id=event.message_id, recipient=recipient
        )
        stored, created = ProviderEvent.objects.get_or_create(
            provider=esp_name[:50],
            event_id=event_id,
            defaults={
                "event_type": str(event.event_type or "")[:50],
                "recipient": recipient,
                "message_id": str(event.message_id or "")[:255],
                "delivery": delivery,
                "payload": payload,
                "occurred_at": _aware(event.timestamp),
            },
        )
        if not created:
            logger.info("Ignoring replayed %s event %s", esp_name, event_id)
            return None
        effect = classify(
            provider=esp_name,
            event_type=stored.event_type,
            reject_reason=event.reject_reason,
            payload=payload,
        )
        if delivery is not None:
            _apply(delivery.pk, effect, stored)
        elif effect.status or effect.suppress:
            logger.warning(
                "%s %s event %s matches no delivery (message %s)",
                esp_name,
                stored.event_type,
                event_id,
                stored.message_id,
            )
        if effect.suppress and recipient:
            add_suppression(
                recipient,
                effect.suppress,
                source=f"{esp_name} webhook: {stored.event_type} event {event_id}",
            )
    return stored


def classify(*, provider: str, event_type: str, reject_reason: str | None, payload: Any) -> Effect:
    """The delivery status and suppression an anymail tracking event calls for."""
    if event_type == EventType.DELIVERED:
        return Effect(status=S.DELIVERED)
    if event_type == EventType.BOUNCED:
        if _is_hard_bounce(provider, reject_reason, payload):
            return Effect(status=S.BOUNCED, suppress=Suppression.Reason.HARD_BOUNCE)
        # Soft bounces may still be delivered (or turn into a hard bounce later).
        return Effect()
    if event_type == EventType.COMPLAINED:
        return Effect(status=S.COMPLAINED, suppress=Suppression.Reason.COMPLAINT)
    if event_type == EventType.UNSUBSCRIBED:
        return Effect(suppress=Suppression.Reason.UNSUBSCRIBED)
    if event_type in (EventType.REJECTED, EventType.FAILED):
        # The provider refused the message after taking the API call: it will not arrive.
        return Effect(status=S.FAILED, accepted=False)
    # queued, sent, deferred, opened, clicked, autoresponded, subscribed, unknown
    return Effect()


def _is_hard_bounce(provider: str, reject_reason: str | None, payload: Any) -> bool:
    if provider == "Postmark" and isinstance(payload, dict):
        # anymail maps Postmark's SoftBounce to reject_reason "bounced" as well, so read
        # Postmark's own type: "Type" on Bounce records, "SuppressionReason" on a
        # SubscriptionChange that Postmark made because of a hard bounce.
        kind = payload.get("Type") or payload.get("SuppressionReason")
        return kind == "HardBounce"
    return bool(reject_reason == RejectReason.BOUNCED)


def find_delivery(*, metadata: dict[str, Any], message_id: Any, recipient: str) -> Delivery | None:
    """The delivery an event is about: by our metadata, else by Message-ID or provider id.

    A candidate whose address differs from the event's recipient (or whose campaign differs
    from the metadata's) is not it: a delivery id from another installation sharing the
    provider account must not settle one of ours.
    """
    campaign_id = str(metadata.get("campaign_id", "") or "")
    raw_id = str(metadata.get("delivery_id", "") or "")
    if raw_id.isdigit():
        candidate = Delivery.objects.filter(pk=int(raw_id)).first()
        if candidate is not None and _same_recipient(candidate, recipient):
            if not campaign_id or campaign_id == str(candidate.campaign_id):
                return candidate
    if message_id:
        text = str(message_id).strip()
        bare = text.strip("<>")
        # Our Message-ID (stored with angle brackets; some providers report it without).
        for candidate in Delivery.objects.filter(message_id__in={text, f"<{bare}>"})[:2]:
            if _same_recipient(candidate, recipient):
                return candidate
        for candidate in Delivery.objects.filter(provider_message_id=text).order_by("pk"):
            if _same_recipient(candidate, recipient):
                return candidate
    return None


def _same_recipient(delivery: Delivery, recipient: str) -> bool:
    return not recipient or normalize_address(delivery.address) == recipient


def _apply(delivery_pk: int, effect: Effect, stored: ProviderEvent) -> None:
    delivery = Delivery.objects.select_for_update().get(pk=delivery_pk)
    current = delivery.status
    target = next_status(current, effect)
    if target is None:
        return
    delivery.status = target
    fields = ["status", "updated_at"]
    if current == S.UNKNOWN:
        # Settled: nobody holds this row any more.
        delivery.claim_token = None
        delivery.lease_expires_at = None
        fields += ["claim_token", "lease_expires_at"]
    if target == S.FAILED:
        detail = stored.payload.get("Description") if isinstance(stored.payload, dict) else None
        delivery.last_error = f"{stored.provider} {stored.event_type}: {detail or 'refused'}"[:1000]
        fields.append("last_error")
    delivery.save(update_fields=fields)
    record_audit(
        "delivery.settled" if current == S.UNKNOWN else "delivery.provider_status",
        actor=f"{stored.provider} webhook",
        obj=delivery,
        data={
            "from": current,
            "to": target,
            "provider": stored.provider,
            "event_id": stored.event_id,
            "event_type": stored.event_type,
            "provider_event": stored.pk,
        },
    )


def next_status(current: str, effect: Effect) -> str | None:
    """The status a delivery in `current` moves to on `effect`, or None to leave it."""
    if current not in _PROGRESS:
        return None
    target = effect.status or (S.SENT if effect.accepted else None)
    if target is None:
        return None
    if current == S.UNKNOWN:
        return target
    return target if _PROGRESS[target] > _PROGRESS[current] else None


def _event_id(provider_id: Any, payload: Any) -> str:
    if provider_id not in (None, ""):
        text = str(provider_id)
        if len(text) <= 255:
            return text
    # Postmark sends IDs for bounces and complaints only; deliveries, opens and
    # subscription changes get a stable hash of the canonical event instead, so a replay
    # of the same JSON maps to the same row.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    # esp_event is parsed JSON for Postmark; other providers may hand over a QueryDict or
    # objects. Store what JSON can hold.
    if hasattr(value, "lists") and callable(value.lists):
        value = {key: values if len(values) > 1 else values[0] for key, values in value.lists()}
    return json.loads(json.dumps(value, default=str))


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)
