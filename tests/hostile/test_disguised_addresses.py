"""Weakness 4: the content layer was blind to addresses a mail client shows.

`zoe.muller<span></span>@example.net`, a zero-width space before the "@" and a full-width
"＠" passed review and were sent. The layer now searches what a reader sees.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.mail import EmailMultiAlternatives

from accounts.models import User
from campaigns import services
from campaigns.guard.message import require_no_foreign_addresses
from campaigns.guard.vocabulary import GuardViolation
from campaigns.models import Approval, Campaign, IllegalTransition
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db

ZOE = "zoe.muller@example.net"
DISGUISES = {
    "empty span in HTML": ("html", "Ask zoe.muller<span></span>@example.net"),
    "HTML comment": ("html", "Ask zoe.muller<!-- -->@example.net"),
    "zero-width space": ("text", "Ask zoe.muller\u200b@example.net"),
    "soft hyphen": ("text", "Ask zoe.mul\u00adler@example.net"),
    "full-width at sign": ("text", "Ask zoe.muller\uff20example.net"),
    "full-width letters": ("text", "Ask ｚｏｅ.ｍｕｌｌｅｒ@ｅｘａｍｐｌｅ.ｎｅｔ"),
    "HTML entity": ("html", "Ask zoe.muller&#64;example.net"),
    "percent escape": ("html", '<a href="mailto:zoe.muller%40example.net">Ask</a>'),
    "in the subject": ("subject", "Ask zoe.muller\u200b@example.net"),
}


def message(where: str, text: str) -> EmailMultiAlternatives:
    built = EmailMultiAlternatives(
        text if where == "subject" else "Update",
        text if where == "text" else "Hello",
        "news@example.com",
        ["ann@example.org"],
        headers={"Message-ID": "<1@x>"},
    )
    built.attach_alternative(f"<p>{text}</p>" if where == "html" else "<p>Hello</p>", "text/html")
    return built


@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_a_disguised_address_of_another_member_is_refused(
    disguise: str, make_member: Callable[..., User]
) -> None:
    make_member(ZOE)
    with pytest.raises(GuardViolation) as refused:
        require_no_foreign_addresses(message(*DISGUISES[disguise]))
    assert refused.value.layer == "content"
    assert ZOE in refused.value.reason


def test_a_campaign_hiding_a_members_address_cannot_be_approved(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    make_member("ann@example.org", first_name="Ann")
    make_member(ZOE, first_name="Zoe")
    html = (
        '<p>Hello {{ first_name|default:"there" }}, ask zoe.muller<span></span>@example.net</p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> Countersign Ltd, 1 Example Street,'
        " Springfield 12345</p>"
    )
    campaign = make_campaign(olivia, html_template=html, text_template="")
    campaign = services.submit_for_review(campaign, by=olivia)
    with pytest.raises(IllegalTransition, match="No foreign address"):
        services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert not Approval.objects.exists()
