"""Small builders for campaigns, shared by the review and sending tests."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from campaigns.models import Campaign, SenderIdentity

POSTAL = "Countersign Ltd, 1 Example Street, Springfield 12345"

TEXT = (
    """Hello {{ first_name|default:"there" }},

Here is what changed on the platform this quarter.

Unsubscribe: {{ unsubscribe_url }}
"""
    + POSTAL
    + "\n"
)

HTML = (
    '<p>Hello {{ first_name|default:"there" }},</p>'
    "<p>Here is what changed on the platform this quarter.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    f"<p>{POSTAL}</p>"
)


def make_sender(**fields: Any) -> SenderIdentity:
    defaults: dict[str, Any] = {
        "name": "Notices",
        "from_name": "Countersign",
        "from_address": "notices@example.com",
        "reply_to": "support@example.com",
        "postal_address": POSTAL,
        "message_id_domain": "mail.example.com",
    }
    defaults.update(fields)
    sender, _ = SenderIdentity.objects.get_or_create(name=defaults.pop("name"), defaults=defaults)
    return sender


def make_campaign(author: User, **fields: Any) -> Campaign:
    from campaigns import services

    defaults: dict[str, Any] = {
        "name": "Quarterly update",
        "category": Campaign.Category.ANNOUNCEMENT,
        "subject_template": 'News for you, {{ first_name|default:"there" }}',
        "text_template": TEXT,
        "html_template": HTML,
    }
    defaults.update(fields)
    sender = defaults.pop("sender", None) or make_sender()
    return services.create_campaign(Campaign(sender=sender, **defaults), by=author)
