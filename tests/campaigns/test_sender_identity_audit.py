"""Sender identities: every create, change and delete made in the admin is in the audit chain."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from campaigns.models import SenderIdentity
from tests.factories import make_campaign, make_sender

pytestmark = pytest.mark.django_db

FORM = {
    "name": "Billing",
    "from_name": "Countersign Billing",
    "from_address": "billing@example.com",
    "reply_to": "",
    "postal_address": "1 Example Street",
    "message_id_domain": "mail.example.com",
}


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_create_change_and_delete_are_each_audited_with_who_and_what(root: User) -> None:
    client = admin_client(root)
    assert client.post(reverse("admin:campaigns_senderidentity_add"), FORM).status_code == 302
    sender = SenderIdentity.objects.get(name="Billing")
    url = reverse("admin:campaigns_senderidentity_change", args=[sender.pk])
    client.post(url, {**FORM, "from_address": "invoices@example.com"})
    delete = reverse("admin:campaigns_senderidentity_delete", args=[sender.pk])
    client.post(delete, {"post": "yes"})

    events = list(
        AuditEvent.objects.filter(object_type="campaigns.senderidentity").values_list(
            "action", "actor_id", "object_id", "data"
        )
    )
    assert [(action, actor, obj) for action, actor, obj, _ in events] == [
        ("sender_identity.created", root.pk, str(sender.pk)),
        ("sender_identity.changed", root.pk, str(sender.pk)),
        ("sender_identity.deleted", root.pk, str(sender.pk)),
    ]
    assert events[0][3]["from_address"] == "billing@example.com"
    assert events[1][3]["changes"] == {
        "from_address": ["billing@example.com", "invoices@example.com"]
    }
    assert not SenderIdentity.objects.filter(pk=sender.pk).exists()


def test_a_refused_delete_leaves_no_event(root: User, olivia: User) -> None:
    sender = make_sender()
    make_campaign(olivia, sender=sender)  # a campaign still uses it (PROTECT)
    client = admin_client(root)
    client.post(
        reverse("admin:campaigns_senderidentity_changelist"),
        {"action": "delete_selected", "_selected_action": [sender.pk], "post": "yes"},
    )
    assert SenderIdentity.objects.filter(pk=sender.pk).exists()
    assert not AuditEvent.objects.filter(action="sender_identity.deleted").exists()


@pytest.mark.parametrize(
    ("from_name", "shown"),
    [("Bank\u202eknaB", "character 5"), ("Billing\nBcc: x", "character 8")],
)
def test_a_sender_name_that_is_not_one_line_of_visible_text_is_refused_at_its_field(
    root: User, from_name: str, shown: str
) -> None:
    response = admin_client(root).post(
        reverse("admin:campaigns_senderidentity_add"), {**FORM, "from_name": from_name}
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["from_name"] and shown in errors["from_name"][0]
    assert not SenderIdentity.objects.filter(name="Billing").exists()
    assert not AuditEvent.objects.filter(action__startswith="sender").exists()
