"""Provider tracking webhooks: Postmark's real JSON through anymail's view, basic auth on."""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import pytest
from anymail.exceptions import AnymailInsecureWebhookWarning
from django.core import checks
from django.core.checks.registry import registry
from django.test import Client, override_settings

from accounts.models import User
from audit.models import AuditEvent
from campaigns.models import Campaign, Delivery, ProviderEvent, SenderIdentity, Suppression
from campaigns.suppressions import is_suppressed
from campaigns.webhooks import Effect, check_webhook_secret, next_status

URL = "/anymail/postmark/tracking/"
SECRET = "postmark-hook:s3cret-Value"
ANYMAIL_SETTINGS = {"WEBHOOK_SECRET": SECRET, "POSTMARK_SERVER_TOKEN": "test-token"}
POSTMARK_ID = "2706ee8a-737c-4285-b032-ccd317af53ed"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("webhook_secret")]


@pytest.fixture
def webhook_secret() -> Any:
    with override_settings(ANYMAIL=ANYMAIL_SETTINGS):
        yield


def auth(credentials: str = SECRET) -> dict[str, str]:
    token = base64.b64encode(credentials.encode()).decode()
    return {"Authorization": f"Basic {token}"}


def post(client: Client, event: dict[str, Any], credentials: str | None = SECRET) -> Any:
    headers = auth(credentials) if credentials is not None else {}
    return client.post(
        URL, data=json.dumps(event), content_type="application/json", headers=headers
    )


@pytest.fixture
def delivery(olivia: User, make_member: Any) -> Delivery:
    sender = SenderIdentity.objects.create(
        name="News",
        from_name="Example News",
        from_address="news@mail.example.com",
        postal_address="1 Example Street, Example City",
        message_id_domain="mail.example.com",
    )
    campaign = Campaign.objects.create(
        name="October update",
        sender=sender,
        subject_template="Hello",
        text_template="Hello {{ first_name }}",
        author=olivia,
        status=Campaign.Status.SENDING,
    )
    member = make_member("Bounce@Example.org")
    return Delivery.objects.create(
        campaign=campaign,
        user=member,
        address="Bounce@Example.org",
        status=Delivery.Status.SENT,
        message_id=f"<c{campaign.pk}.d1.abc@mail.example.com>",
        provider_message_id=POSTMARK_ID,
    )


def metadata(delivery: Delivery) -> dict[str, str]:
    # Postmark echoes the message's Metadata (always as strings) in every webhook.
    return {"campaign_id": str(delivery.campaign_id), "delivery_id": str(delivery.pk)}


def hard_bounce(delivery: Delivery, **overrides: Any) -> dict[str, Any]:
    event = {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 901542550,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "",
        "MessageID": POSTMARK_ID,
        "Metadata": metadata(delivery),
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": delivery.address,
        "From": "news@mail.example.com",
        "BouncedAt": "2024-10-01T16:28:50.3963933-04:00",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Hello",
    }
    event.update(overrides)
    return event


def spam_complaint(delivery: Delivery) -> dict[str, Any]:
    return {
        "RecordType": "SpamComplaint",
        "MessageStream": "outbound",
        "ID": 901542551,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "Tag": "",
        "MessageID": POSTMARK_ID,
        "Metadata": metadata(delivery),
        "ServerID": 23,
        "Description": "",
        "Details": "Test spam complaint details",
        "Email": delivery.address,
        "From": "news@mail.example.com",
        "BouncedAt": "2024-10-01T16:40:00Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": False,
        "Subject": "Hello",
    }


def delivered(delivery: Delivery) -> dict[str, Any]:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": POSTMARK_ID,
        "Recipient": delivery.address,
        "Tag": "",
        "DeliveredAt": "2024-10-01T16:20:00.1234567Z",
        "Details": "smtp;250 2.0.0 OK",
        "Metadata": metadata(delivery),
    }


def subscription_change(delivery: Delivery, reason: str = "ManualSuppression") -> dict[str, Any]:
    return {
        "RecordType": "SubscriptionChange",
        "MessageID": POSTMARK_ID,
        "ServerID": 23,
        "MessageStream": "outbound",
        "ChangedAt": "2024-10-02T09:00:00Z",
        "Recipient": delivery.address,
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": reason,
        "Tag": "",
        "Metadata": metadata(delivery),
    }


def refresh(delivery: Delivery) -> Delivery:
    delivery.refresh_from_db()
    return delivery


# --- authentication -----------------------------------------------------------------------


def test_wrong_secret_is_refused_and_changes_nothing(client: Client, delivery: Delivery) -> None:
    audit_before = AuditEvent.objects.count()
    response = post(client, hard_bounce(delivery), credentials="postmark-hook:wrong")
    assert response.status_code in (400, 401, 403)
    assert ProviderEvent.objects.count() == 0
    assert Suppression.objects.count() == 0
    assert refresh(delivery).status == Delivery.Status.SENT
    assert AuditEvent.objects.count() == audit_before


def test_missing_credentials_are_refused(client: Client, delivery: Delivery) -> None:
    response = post(client, spam_complaint(delivery), credentials=None)
    assert response.status_code in (400, 401, 403)
    assert ProviderEvent.objects.count() == 0
    assert Suppression.objects.count() == 0


def test_without_a_configured_secret_events_are_refused_when_debug_is_off(
    client: Client, delivery: Delivery
) -> None:
    # anymail itself accepts everything when no secret is set; our receiver must not.
    with override_settings(ANYMAIL={}, DEBUG=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", AnymailInsecureWebhookWarning)
        response = post(client, hard_bounce(delivery), credentials=None)
    assert response.status_code == 400
    assert ProviderEvent.objects.count() == 0
    assert Suppression.objects.count() == 0
    assert refresh(delivery).status == Delivery.Status.SENT


def test_system_check_fails_for_anymail_transport_without_secret() -> None:
    transport = "anymail.backends.postmark.EmailBackend"
    with override_settings(ANYMAIL={}, DEBUG=False, EMAIL_TRANSPORT=transport):
        errors = check_webhook_secret()
    assert [e.id for e in errors] == ["countersign.E020"]
    assert all(e.level == checks.ERROR for e in errors)
    with override_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET}, EMAIL_TRANSPORT=transport):
        assert check_webhook_secret() == []
    with override_settings(ANYMAIL={}, DEBUG=True, EMAIL_TRANSPORT=transport):
        assert check_webhook_secret() == []


def test_system_check_is_registered() -> None:
    assert check_webhook_secret in registry.get_checks()


# --- events -------------------------------------------------------------------------------


def test_hard_bounce_suppresses_and_marks_delivery_bounced(
    client: Client, delivery: Delivery
) -> None:
    response = post(client, hard_bounce(delivery))
    assert response.status_code == 200

    assert refresh(delivery).status == Delivery.Status.BOUNCED
    suppression = Suppression.objects.get()
    assert suppression.address == "bounce@example.org"
    assert suppression.reason == Suppression.Reason.HARD_BOUNCE
    assert "Postmark" in suppression.source
    assert is_suppressed("bounce@example.org", Campaign.Category.SERVICE_NOTICE)

    stored = ProviderEvent.objects.get()
    assert (stored.provider, stored.event_id, stored.event_type) == (
        "Postmark",
        "901542550",
        "bounced",
    )
    assert stored.delivery == delivery
    assert stored.recipient == "bounce@example.org"
    assert stored.message_id == POSTMARK_ID
    assert stored.payload["Type"] == "HardBounce"
    assert stored.occurred_at is not None and stored.occurred_at.utcoffset() is not None

    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "delivery.provider_status" in actions
    assert "suppression.added" in actions
    change = AuditEvent.objects.get(action="delivery.provider_status")
    assert change.object_id == str(delivery.pk)
    assert (change.data["from"], change.data["to"]) == ("sent", "bounced")


def test_soft_bounce_neither_suppresses_nor_marks_bounced(
    client: Client, delivery: Delivery
) -> None:
    # anymail reports Postmark's SoftBounce with reject_reason "bounced" too.
    event = hard_bounce(delivery, ID=901542560, Type="SoftBounce", TypeCode=4096, Inactive=False)
    assert post(client, event).status_code == 200
    assert ProviderEvent.objects.filter(event_id="901542560").exists()
    assert Suppression.objects.count() == 0
    assert refresh(delivery).status == Delivery.Status.SENT


def test_transient_deferral_does_not_suppress(client: Client, delivery: Delivery) -> None:
    event = hard_bounce(delivery, ID=901542561, Type="Transient", TypeCode=2, Inactive=False)
    assert post(client, event).status_code == 200
    assert Suppression.objects.count() == 0
    assert refresh(delivery).status == Delivery.Status.SENT


def test_spam_complaint_suppresses_for_every_category(client: Client, delivery: Delivery) -> None:
    assert post(client, spam_complaint(delivery)).status_code == 200
    assert refresh(delivery).status == Delivery.Status.COMPLAINED
    suppression = Suppression.objects.get()
    assert suppression.reason == Suppression.Reason.COMPLAINT
    assert is_suppressed("bounce@example.org", Campaign.Category.ANNOUNCEMENT)
    assert is_suppressed("bounce@example.org", Campaign.Category.SERVICE_NOTICE)


def test_delivery_event_marks_delivered_without_suppressing(
    client: Client, delivery: Delivery
) -> None:
    assert post(client, delivered(delivery)).status_code == 200
    assert refresh(delivery).status == Delivery.Status.DELIVERED
    assert Suppression.objects.count() == 0
    stored = ProviderEvent.objects.get()
    # Postmark sends no ID for deliveries: the event is keyed by a hash of its JSON.
    assert stored.event_id.startswith("sha256:") and len(stored.event_id) == 71
    assert stored.event_type == "delivered"


def test_replayed_event_is_a_no_op(client: Client, delivery: Delivery) -> None:
    assert post(client, hard_bounce(delivery)).status_code == 200
    audit_after_first = AuditEvent.objects.count()
    suppression = Suppression.objects.get()

    assert post(client, hard_bounce(delivery)).status_code == 200

    assert ProviderEvent.objects.count() == 1
    assert AuditEvent.objects.count() == audit_after_first
    assert list(Suppression.objects.all()) == [suppression]


def test_replayed_event_without_provider_id_is_a_no_op(client: Client, delivery: Delivery) -> None:
    assert post(client, delivered(delivery)).status_code == 200
    audit_after_first = AuditEvent.objects.count()
    assert post(client, delivered(delivery)).status_code == 200
    assert ProviderEvent.objects.count() == 1
    assert AuditEvent.objects.count() == audit_after_first


def test_replay_after_an_operator_removed_the_suppression_does_not_restore_it(
    client: Client, delivery: Delivery, root: User
) -> None:
    from campaigns.suppressions import remove_suppression

    post(client, hard_bounce(delivery))
    remove_suppression(Suppression.objects.get(), by=root, reason="Mailbox fixed, ticket 42")
    assert post(client, hard_bounce(delivery)).status_code == 200
    assert Suppression.objects.count() == 0


def test_late_delivered_event_never_moves_a_bounced_row_back(
    client: Client, delivery: Delivery
) -> None:
    post(client, hard_bounce(delivery))
    assert post(client, delivered(delivery)).status_code == 200
    assert refresh(delivery).status == Delivery.Status.BOUNCED
    assert ProviderEvent.objects.count() == 2


def test_complaint_after_delivery_moves_forward(client: Client, delivery: Delivery) -> None:
    post(client, delivered(delivery))
    post(client, spam_complaint(delivery))
    assert refresh(delivery).status == Delivery.Status.COMPLAINED


def test_subscription_change_unsubscribe_suppresses_announcements_only(
    client: Client, delivery: Delivery
) -> None:
    assert post(client, subscription_change(delivery)).status_code == 200
    suppression = Suppression.objects.get()
    assert suppression.reason == Suppression.Reason.UNSUBSCRIBED
    assert is_suppressed("bounce@example.org", Campaign.Category.ANNOUNCEMENT)
    assert not is_suppressed("bounce@example.org", Campaign.Category.SERVICE_NOTICE)
    assert refresh(delivery).status == Delivery.Status.SENT


def test_subscription_change_for_a_hard_bounce_suppresses_as_hard_bounce(
    client: Client, delivery: Delivery
) -> None:
    assert post(client, subscription_change(delivery, reason="HardBounce")).status_code == 200
    assert Suppression.objects.get().reason == Suppression.Reason.HARD_BOUNCE
    assert refresh(delivery).status == Delivery.Status.BOUNCED


def test_event_for_unknown_delivery_settles_it_with_an_audit_event(
    client: Client, delivery: Delivery
) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.UNKNOWN)
    assert post(client, delivered(delivery)).status_code == 200
    delivery = refresh(delivery)
    assert delivery.status == Delivery.Status.DELIVERED
    settled = AuditEvent.objects.get(action="delivery.settled")
    assert settled.object_id == str(delivery.pk)
    assert (settled.data["from"], settled.data["to"]) == ("unknown", "delivered")
    assert settled.actor_label == "Postmark webhook"


def test_open_event_settles_unknown_delivery_as_sent(client: Client, delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.UNKNOWN)
    event = {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "FirstOpen": True,
        "Client": {"Name": "Gmail", "Company": "Google", "Family": "Gmail"},
        "OS": {"Name": "unknown", "Company": "unknown", "Family": "unknown"},
        "Platform": "Unknown",
        "UserAgent": "Mozilla/5.0",
        "ReadSeconds": 0,
        "Geo": {},
        "MessageID": POSTMARK_ID,
        "Metadata": metadata(delivery),
        "ReceivedAt": "2024-10-01T17:00:00Z",
        "Tag": "",
        "Recipient": delivery.address,
    }
    assert post(client, event).status_code == 200
    assert refresh(delivery).status == Delivery.Status.SENT
    assert AuditEvent.objects.filter(action="delivery.settled").count() == 1


def test_event_without_metadata_is_matched_by_provider_message_id(
    client: Client, delivery: Delivery
) -> None:
    event = delivered(delivery)
    del event["Metadata"]
    assert post(client, event).status_code == 200
    assert refresh(delivery).status == Delivery.Status.DELIVERED
    assert ProviderEvent.objects.get().delivery == delivery


def test_event_naming_another_recipient_does_not_touch_the_delivery(
    client: Client, delivery: Delivery
) -> None:
    # Right delivery id, wrong address (e.g. another installation's ids): not ours.
    event = hard_bounce(delivery, Email="someone-else@example.net", MessageID="other-id")
    assert post(client, event).status_code == 200
    assert refresh(delivery).status == Delivery.Status.SENT
    assert ProviderEvent.objects.get().delivery is None
    # The address that bounced is still suppressed: that is a fact about the address.
    assert Suppression.objects.get().address == "someone-else@example.net"


def test_event_for_a_row_still_sending_is_stored_but_left_to_the_worker(
    client: Client, delivery: Delivery
) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.SENDING)
    assert post(client, delivered(delivery)).status_code == 200
    assert refresh(delivery).status == Delivery.Status.SENDING
    assert ProviderEvent.objects.get().delivery == delivery


@pytest.mark.parametrize(
    ("current", "effect", "expected"),
    [
        ("sent", Effect(status="delivered"), "delivered"),
        ("delivered", Effect(status="bounced"), "bounced"),
        ("bounced", Effect(status="delivered"), None),
        ("complained", Effect(status="bounced"), None),
        ("complained", Effect(status="delivered"), None),
        ("unknown", Effect(), "sent"),
        ("unknown", Effect(status="failed", accepted=False), "failed"),
        ("sent", Effect(), None),
        ("pending", Effect(status="delivered"), None),
        ("skipped", Effect(status="complained"), None),
    ],
)
def test_delivery_status_only_moves_forward(
    current: str, effect: Effect, expected: str | None
) -> None:
    assert next_status(current, effect) == expected


def test_resubscribe_event_does_not_lift_a_suppression(client: Client, delivery: Delivery) -> None:
    # Lifting a suppression needs a person and a reason (the admin's remove view).
    post(client, subscription_change(delivery))
    event = subscription_change(delivery)
    event.update(
        {"SuppressSending": False, "SuppressionReason": None, "ChangedAt": "2024-10-03T09:00:00Z"}
    )
    assert post(client, event).status_code == 200
    assert ProviderEvent.objects.filter(event_type="subscribed").count() == 1
    assert Suppression.objects.get().reason == Suppression.Reason.UNSUBSCRIBED
