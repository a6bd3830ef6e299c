"""`seed_demo`: staff, an awkward audience, a sender and a draft, idempotently."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import is_password_usable
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import AudienceAttribute, User
from audit.models import AuditEvent
from campaigns.management.commands.seed_demo import (
    AWKWARD_MEMBERS,
    CAMPAIGN_NAME,
    DEFAULT_PASSWORD,
    demo_member,
)
from campaigns.models import Campaign, SenderIdentity
from campaigns.rendering import campaign_placeholders
from campaigns.templating import compile_subject, compile_template

pytestmark = pytest.mark.django_db

SEED_USERS = 60


def seed(**options: Any) -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out, **{"users": SEED_USERS, **options})
    return out.getvalue()


def snapshot() -> dict[str, Any]:
    return {
        "users": list(
            User.objects.order_by("pk").values_list(
                "pk",
                "username",
                "email",
                "password",
                "first_name",
                "last_name",
                "locale",
                "attributes",
                "is_staff",
                "is_superuser",
            )
        ),
        "groups": sorted(User.groups.through.objects.values_list("user_id", "group_id")),
        "senders": list(SenderIdentity.objects.values()),
        "campaigns": list(Campaign.objects.values()),
        "contributors": list(Campaign.contributors.through.objects.values_list("pk", flat=True)),
        "audit": list(AuditEvent.objects.values_list("seq", "hash")),
        "attributes": list(AudienceAttribute.objects.values_list("name", flat=True)),
    }


def test_seeding_twice_changes_nothing() -> None:
    seed()
    first = snapshot()
    output = seed()
    assert snapshot() == first
    assert "0 created, 0 updated" in output
    assert User.objects.filter(is_staff=False).count() == SEED_USERS
    assert Campaign.objects.filter(name=CAMPAIGN_NAME).count() == 1


def test_seeding_more_users_later_keeps_the_first_ones_identical() -> None:
    seed(users=20)
    before = list(User.objects.filter(is_staff=False).order_by("pk").values())
    seed(users=40)
    after = list(User.objects.filter(is_staff=False).order_by("pk").values())
    assert after[:20] == before
    assert len(after) == 40


def test_demo_staff_log_in_with_the_demo_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PASSWORD", "a-demo-password-for-tests")
    output = seed(users=0)

    for username in ("olivia", "oscar", "rita", "root"):
        assert authenticate(username=username, password="a-demo-password-for-tests") is not None
        assert f"  {username} " in output
    assert authenticate(username="OLIVIA@example.com", password="a-demo-password-for-tests")
    assert authenticate(username="olivia", password=DEFAULT_PASSWORD) is None
    roles = {u.username: sorted(g.name for g in u.groups.all()) for u in User.objects.all()}
    assert roles == {"olivia": ["Ops"], "oscar": ["Ops"], "rita": ["Compliance"], "root": ["Admin"]}
    assert list(User.objects.filter(is_superuser=True).values_list("username", flat=True)) == [
        "root"
    ]
    assert User.objects.filter(is_staff=True).count() == 4


def test_changed_demo_password_is_applied_on_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    seed(users=0)
    assert authenticate(username="rita", password=DEFAULT_PASSWORD) is not None
    monkeypatch.setenv("DEMO_PASSWORD", "another-demo-password")
    seed(users=0)
    assert authenticate(username="rita", password="another-demo-password") is not None


def test_audience_has_the_awkward_names() -> None:
    seed()
    members = User.objects.filter(is_staff=False)
    names = set(members.values_list("first_name", flat=True))
    last_names = set(members.values_list("last_name", flat=True))

    assert {
        "Smith, John",
        'Jane "JJ"',
        "Zoë",
        "Łukasz",
        "山田 太郎",
        "أحمد",
        "bob@example.net",
    } <= names
    assert "O'Brien" in last_names
    assert any(len(f"{m.first_name} {m.last_name}") > 100 for m in members)
    assert members.filter(email="o'connor@example.net").exists()
    assert not members.filter(email="bob@example.net").exists()
    assert {"en", "de", "fr", "ja"} <= set(members.values_list("locale", flat=True))
    assert {m.email.rsplit("@", 1)[1] for m in members} == {
        "example.com",
        "example.org",
        "example.net",
    }
    plans = {m.attributes.get("plan") for m in members}
    assert {"free", "pro"} <= plans
    assert all(m.attributes.get("country") for m in members)
    assert set(AudienceAttribute.objects.values_list("name", flat=True)) == {"plan", "country"}
    assert not any(is_password_usable(m.password) for m in members)
    assert User.objects.audience().count() == SEED_USERS


def test_members_are_the_same_on_every_call() -> None:
    assert [demo_member(i) for i in range(200)] == [demo_member(i) for i in range(200)]
    emails = [demo_member(i).email.lower() for i in range(5_000)]
    assert len(set(emails)) == len(emails)
    assert [demo_member(i).email for i in range(len(AWKWARD_MEMBERS))] == [
        row[0] for row in AWKWARD_MEMBERS
    ]


def test_sender_and_draft_campaign_are_seeded() -> None:
    seed()
    sender = SenderIdentity.objects.get(name="Countersign Notices")
    assert (sender.from_name, sender.from_address, sender.reply_to) == (
        "Countersign",
        "notices@example.com",
        "support@example.com",
    )
    assert sender.message_id_domain == "mail.example.com"
    campaign = Campaign.objects.get(name=CAMPAIGN_NAME)
    olivia = User.objects.get(username="olivia")
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.category == Campaign.Category.ANNOUNCEMENT
    assert (campaign.sender, campaign.author) == (sender, olivia)
    assert list(campaign.contributors.all()) == [olivia]
    assert campaign.subject_template == (
        'Your quarterly platform update, {{ first_name|default:"there" }}'
    )
    for body in (campaign.text_template, campaign.html_template):
        assert '{{ first_name|default:"there" }}' in body
        assert '{{ plan|default:"free" }}' in body
        assert sender.postal_address in body
    assert "Unsubscribe: {{ unsubscribe_url }}" in campaign.text_template
    assert '<a href="{{ unsubscribe_url }}">Unsubscribe</a>' in campaign.html_template
    # No audience filters: everyone in the audience.
    assert not campaign.audience_locale and not campaign.audience_attribute_name
    assert not campaign.audience_addresses


def test_seeded_draft_uses_only_known_placeholders_and_renders_for_everyone() -> None:
    seed()
    campaign = Campaign.objects.get(name=CAMPAIGN_NAME)
    allowed = campaign_placeholders(campaign.category)
    subject = compile_subject(campaign.subject_template, allowed=allowed)
    text = compile_template(campaign.text_template, allowed=allowed)
    compile_template(campaign.html_template, allowed=allowed)

    subjects = set()
    for member in User.objects.audience():
        values = {
            "first_name": member.first_name,
            "unsubscribe_url": "https://example.com/u/token/",
            **member.attributes,
        }
        subjects.add(subject.render(values))
        assert "Unsubscribe: https://example.com/u/token/" in text.render(values)
    assert "Your quarterly platform update, Smith, John" in subjects
    assert "Your quarterly platform update, there" in subjects


def test_existing_campaign_of_that_name_is_left_alone() -> None:
    seed(users=0)
    Campaign.objects.filter(name=CAMPAIGN_NAME).update(subject_template="Edited by Ops")
    seed(users=0)
    assert list(Campaign.objects.values_list("subject_template", flat=True)) == ["Edited by Ops"]


def test_seeding_a_thousand_members_uses_bulk_queries() -> None:
    with CaptureQueriesContext(connection) as queries:
        seed(users=1_000)
    assert User.objects.filter(is_staff=False).count() == 1_000
    # Row-by-row inserts would take over a thousand statements. The four staff accounts,
    # each created with its audit event, take about a hundred between them.
    assert len(queries.captured_queries) < 150
