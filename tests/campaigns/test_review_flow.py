"""Compose, submit, review, approve: the two-person rule and the digest, by crafted requests."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services
from campaigns.audience import count_audience
from campaigns.models import (
    Approval,
    Campaign,
    Delivery,
    IllegalTransition,
    StaleDigest,
    TwoPersonRuleViolation,
)
from campaigns.rendering import preview_time
from tests.conftest import DEMO_PASSWORD, make_staff
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _locmem_transport(settings: object) -> None:
    # The guarded backend still runs; only the transport under it is Django's in-memory one.
    settings.EMAIL_TRANSPORT = "django.core.mail.backends.locmem.EmailBackend"  # type: ignore[attr-defined]


@pytest.fixture
def audience(make_member: Callable[..., User]) -> list[User]:
    return [
        make_member("ann@example.org", first_name="Ann", last_name="Lee", locale="en"),
        make_member("smith@example.net", first_name="Smith, John", locale="en"),
        make_member("zoe@example.com", first_name="Zoë", last_name="Łukasz", locale="de"),
    ]


def login(user: User | None) -> Client:
    client = Client()
    if user is not None:
        assert client.login(username=user.username, password=DEMO_PASSWORD)
    return client


def url(name: str, campaign: Campaign, *extra: int) -> str:
    return reverse(f"admin:campaigns_campaign_{name}", args=[campaign.pk, *extra])


def submitted(author: User, audience: list[User], **fields: object) -> Campaign:
    campaign = make_campaign(author, **fields)
    return services.submit_for_review(campaign, by=author)


# --- Submit -----------------------------------------------------------------------------------


def test_submit_freezes_audience_into_pending_deliveries(
    olivia: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert campaign.recipient_count == 3
    assert re.fullmatch(r"[0-9a-f]{64}", campaign.frozen_digest)
    rows = Delivery.objects.filter(campaign=campaign).order_by("user_id")
    assert [d.address for d in rows] == [u.email for u in audience]
    assert {d.status for d in rows} == {Delivery.Status.PENDING}
    assert rows[1].recipient_data["first_name"] == "Smith, John"
    assert AuditEvent.objects.filter(
        action="campaign.submitted", object_id=str(campaign.pk)
    ).exists()


def test_submit_notifies_each_reviewer_in_a_message_of_their_own(
    olivia: User,
    rita: User,
    audience: list[User],
    django_capture_on_commit_callbacks: Any,
) -> None:
    second = make_staff("ruth", "Compliance")
    campaign = make_campaign(olivia)
    with django_capture_on_commit_callbacks(execute=True):
        services.submit_for_review(campaign, by=olivia)
    assert sorted(m.to[0] for m in mail.outbox) == sorted([rita.email, second.email])
    assert all(len(m.to) == 1 and not m.cc and not m.bcc for m in mail.outbox)
    assert "Review requested" in mail.outbox[0].subject


def test_template_errors_are_refused_on_save_with_their_position(olivia: User) -> None:
    from campaigns.forms import CampaignForm
    from tests.factories import make_sender

    sender = make_sender()
    cases = {
        "subject_template": "Hi\r\nBcc: x@evil.example",
        "text_template": "Hello {% load static %}",
    }
    for field, value in cases.items():
        data = {
            "name": "x",
            "category": "announcement",
            "sender": sender.pk,
            "subject_template": "Hello",
            "text_template": "Hi {{ unsubscribe_url }}",
            "html_template": "",
        }
        data[field] = value
        form = CampaignForm(data=data)
        assert not form.is_valid()
        assert "line 1" in str(form.errors[field]), form.errors


def test_empty_audience_cannot_be_submitted(olivia: User) -> None:
    campaign = make_campaign(olivia)
    with pytest.raises(IllegalTransition, match="audience is empty"):
        services.submit_for_review(campaign, by=olivia)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_audience_filters_narrow_recipients(olivia: User, audience: list[User]) -> None:
    audience[0].attributes = {"plan": "pro"}
    audience[0].save()
    by_locale = make_campaign(olivia, audience_locale="de")
    assert count_audience(by_locale).recipients == 1
    by_attribute = make_campaign(
        olivia, name="b", audience_attribute_name="plan", audience_attribute_value="pro"
    )
    assert count_audience(by_attribute).recipients == 1
    by_list = make_campaign(
        olivia, name="c", audience_addresses="ANN@example.org\nnobody@example.org\n"
    )
    summary = count_audience(by_list)
    assert (summary.recipients, summary.unmatched_list_addresses) == (1, 1)


# --- The two-person rule -----------------------------------------------------------------------


def test_author_cannot_approve_own_campaign(audience: list[User]) -> None:
    both = make_staff("bea", "Ops", "Compliance")
    campaign = submitted(both, audience)
    with pytest.raises(TwoPersonRuleViolation):
        services.approve_campaign(campaign, by=both, digest=campaign.frozen_digest)


def test_editor_and_submitter_cannot_approve(olivia: User, audience: list[User]) -> None:
    editor = make_staff("eddie", "Ops", "Compliance")
    submitter = make_staff("sue", "Ops", "Compliance")
    campaign = make_campaign(olivia)
    campaign.subject_template = "Edited subject"
    services.edit_campaign(campaign, by=editor, changed=["subject_template"])
    campaign = services.submit_for_review(campaign, by=submitter)
    for person in (editor, submitter):
        with pytest.raises(TwoPersonRuleViolation):
            services.approve_campaign(campaign, by=person, digest=campaign.frozen_digest)
        with pytest.raises(TwoPersonRuleViolation):
            services.reject_campaign(
                campaign, by=person, digest=campaign.frozen_digest, comment="no"
            )


def test_superuser_author_cannot_approve(audience: list[User]) -> None:
    boss = make_staff("boss", "Ops", "Compliance", superuser=True)
    campaign = submitted(boss, audience)
    with pytest.raises(TwoPersonRuleViolation):
        services.approve_campaign(campaign, by=boss, digest=campaign.frozen_digest)
    response = login(boss).post(url("approve", campaign), {"digest": campaign.frozen_digest})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW


def test_superuser_without_compliance_role_cannot_approve(
    olivia: User, root: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    response = login(root).post(url("approve", campaign), {"digest": campaign.frozen_digest})
    assert response.status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW


def test_third_person_approves_and_approval_records_what_was_seen(
    olivia: User, oscar: User, rita: User, audience: list[User]
) -> None:
    campaign = make_campaign(olivia)
    campaign.subject_template = "Edited by Oscar"
    services.edit_campaign(campaign, by=oscar, changed=["subject_template"])
    campaign = services.submit_for_review(campaign, by=oscar)
    response = login(rita).post(
        url("approve", campaign), {"digest": campaign.frozen_digest, "comment": "ok"}
    )
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status in (Campaign.Status.APPROVED, Campaign.Status.SENDING)
    assert campaign.approved_by == rita
    approval = Approval.objects.get(campaign=campaign)
    assert approval.decision == "approved" and approval.digest == campaign.frozen_digest
    assert approval.recipient_count == 3 and approval.audience_hash == campaign.audience_hash
    assert approval.samples and all("Message-ID:" in s["eml"] for s in approval.samples)
    # The stored sample is byte-for-byte what the .eml preview serves.
    sample = approval.samples[0]
    served = login(rita).get(url("preview_eml", campaign, sample["delivery_id"]))
    assert served.content.decode() == sample["eml"]
    with pytest.raises(ValueError):
        approval.save()


# --- Digest ------------------------------------------------------------------------------------


def test_stale_digest_is_refused_with_a_message(
    olivia: User, rita: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    with pytest.raises(StaleDigest):
        services.approve_campaign(campaign, by=rita, digest="0" * 64)
    response = login(rita).post(url("approve", campaign), {"digest": "0" * 64}, follow=True)
    assert response.status_code == 200
    assert "changed since this review page was loaded" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW


def test_edit_after_approval_returns_to_draft_and_old_digest_no_longer_approves(
    olivia: User, rita: User, audience: list[User], settings: object
) -> None:
    future = "2099-01-01T09:00:00Z"
    campaign = submitted(olivia, audience, scheduled_at=future)
    old = campaign.frozen_digest
    services.approve_campaign(campaign, by=rita, digest=old)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.APPROVED
    campaign.text_template = campaign.text_template + "\nOne more line."
    services.edit_campaign(campaign, by=olivia, changed=["text_template"])
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.approved_digest == "" and campaign.frozen_digest == ""
    assert not Delivery.objects.filter(campaign=campaign).exists()
    assert Approval.objects.get(campaign=campaign).voided_at is not None
    assert AuditEvent.objects.filter(action="campaign.edited", data__voided="approved").exists()
    campaign = services.submit_for_review(campaign, by=olivia)
    assert campaign.frozen_digest != old
    with pytest.raises(StaleDigest):
        services.approve_campaign(campaign, by=rita, digest=old)


def test_edit_in_review_through_the_admin_returns_to_draft(
    olivia: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    client = login(olivia)
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    data["sender"] = campaign.sender_id
    data["subject_template"] = "A new subject"
    for name in ("audience_joined_after", "audience_joined_before", "scheduled_at"):
        data.pop(name, None)
        data[f"{name}_0"] = ""
        data[f"{name}_1"] = ""
    response = client.post(reverse("admin:campaigns_campaign_change", args=[campaign.pk]), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.subject_template == "A new subject"


def test_reject_needs_a_comment_and_returns_to_draft(
    olivia: User, rita: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    client = login(rita)
    client.post(url("reject", campaign), {"digest": campaign.frozen_digest, "comment": ""})
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    client.post(
        url("reject", campaign), {"digest": campaign.frozen_digest, "comment": "Fix the subject"}
    )
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT and campaign.rejected_by == rita
    decision = Approval.objects.get(campaign=campaign)
    assert (decision.decision, decision.comment) == ("rejected", "Fix the subject")


# --- Review page ---------------------------------------------------------------------------------


def test_review_page_shows_digest_samples_and_sandboxed_html(
    olivia: User, rita: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    response = login(rita).get(url("review", campaign))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<input type="hidden" name="digest" value="{campaign.frozen_digest}">' in html
    assert 'sandbox=""' in html and "allow-scripts" not in html and "allow-same-origin" not in html
    assert "Smith, John" not in html or "smith@example.net" in html
    review = response.context["review"]
    assert review.checks_pass, [(c.label, c.detail) for c in review.checks if not c.ok]
    labels = [s.label for s in review.samples]
    assert labels[0] == "first recipient"
    for sample in review.samples:
        parsed = email.message_from_string(sample.eml, policy=email.policy.default)
        assert [a.addr_spec for a in parsed["To"].addresses] == [sample.delivery.address]
        frame = login(rita).get(url("preview_html", campaign, sample.delivery.pk))
        assert frame.status_code == 200
        assert "sandbox" in frame["Content-Security-Policy"]
        assert "script-src" not in frame["Content-Security-Policy"]  # default-src 'none' covers it
        assert frame["X-Frame-Options"] == "SAMEORIGIN"


def test_recipients_csv_lists_the_frozen_audience(
    olivia: User, rita: User, audience: list[User]
) -> None:
    campaign = submitted(olivia, audience)
    response = login(rita).get(url("recipients_csv", campaign))
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    lines = body.strip().splitlines()
    assert lines[0] == "delivery_id,user_id,address,status"
    assert sorted(line.split(",")[2] for line in lines[1:]) == sorted(u.email for u in audience)


def test_live_audience_count_endpoint(olivia: User, audience: list[User]) -> None:
    response = login(olivia).get(
        reverse("admin:campaigns_campaign_audience_count"), {"audience_locale": "en"}
    )
    assert response.json()["recipients"] == 2


# --- Test send -----------------------------------------------------------------------------------


def test_test_send_goes_to_each_seed_address_alone(
    olivia: User, audience: list[User], settings: Any
) -> None:
    # Seeds are staff addresses, or addresses in an internal test domain (like her phone's).
    settings.TEST_SEND_INTERNAL_DOMAINS = ["example.net"]
    olivia.seed_addresses = "olivia@example.com\nolivia.phone@example.net\n"
    olivia.save()
    campaign = make_campaign(olivia)
    response = login(olivia).post(url("test_send", campaign))
    assert response.status_code == 302
    delivered: list[str] = []
    for message in mail.outbox:
        parsed = email.message_from_bytes(message.message().as_bytes(), policy=email.policy.default)
        delivered.extend(a.addr_spec for a in parsed["To"].addresses)
        assert parsed["Cc"] is None and parsed["Bcc"] is None
    assert sorted(delivered) == ["olivia.phone@example.net", "olivia@example.com"]
    assert len(mail.outbox) == 2
    assert AuditEvent.objects.filter(action="campaign.test_sent").count() == 1


# --- The permission table, cell by cell ----------------------------------------------------------

ROLES = ["ops", "compliance", "admin", "none", "anonymous"]
TABLE = {
    #                 ops    compl  admin  none   anon
    "create": (True, False, False, False, False),
    "edit": (True, False, False, False, False),
    "submit": (True, False, False, False, False),
    "review": (True, True, True, False, False),
    "eml": (True, True, True, False, False),
    "recipients_csv": (True, True, True, False, False),
    "approve": (False, True, False, False, False),
    "reject": (False, True, False, False, False),
    "test_send": (True, True, False, False, False),
}


@pytest.mark.parametrize("action", list(TABLE))
@pytest.mark.parametrize("role", ROLES)
def test_permission_table(action: str, role: str, olivia: User, audience: list[User]) -> None:
    from tests.factories import make_sender

    actor = {
        "ops": make_staff("opal", "Ops"),
        "compliance": make_staff("cora", "Compliance"),
        "admin": make_staff("ada", "Admin", superuser=True),
        "none": make_staff("nobody"),
        "anonymous": None,
    }[role]
    allowed = TABLE[action][ROLES.index(role)]
    client = login(actor)
    campaign = make_campaign(olivia)
    if action in ("review", "eml", "recipients_csv", "approve", "reject"):
        campaign = services.submit_for_review(campaign, by=olivia)
    first = Delivery.objects.filter(campaign=campaign).first()
    sender = make_sender()
    form = {
        "name": "Changed",
        "category": "announcement",
        "sender": sender.pk,
        "subject_template": "Hello",
        "text_template": "Hi {{ unsubscribe_url }} " + sender.postal_address,
        "html_template": "",
        "audience_locale": "",
        "audience_attribute_name": "",
        "audience_attribute_value": "",
        "audience_addresses": "",
    }
    requests = {
        "create": lambda: client.post(reverse("admin:campaigns_campaign_add"), form),
        "edit": lambda: client.post(
            reverse("admin:campaigns_campaign_change", args=[campaign.pk]), form
        ),
        "submit": lambda: client.post(url("submit", campaign)),
        "review": lambda: client.get(url("review", campaign)),
        "eml": lambda: client.get(url("preview_eml", campaign, first.pk if first else 0)),
        "recipients_csv": lambda: client.get(url("recipients_csv", campaign)),
        "approve": lambda: client.post(
            url("approve", campaign), {"digest": campaign.frozen_digest}
        ),
        "reject": lambda: client.post(
            url("reject", campaign), {"digest": campaign.frozen_digest, "comment": "no"}
        ),
        "test_send": lambda: client.post(url("test_send", campaign)),
    }
    before = Campaign.objects.get(pk=campaign.pk)
    response = requests[action]()
    after = Campaign.objects.get(pk=campaign.pk)
    if role == "anonymous":
        assert response.status_code == 302 and "/login/" in response["Location"]
        assert after.status == before.status and after.name == before.name
        return
    if not allowed:
        assert response.status_code == 403, (action, role, response.status_code)
        assert (after.status, after.name) == (before.status, before.name)
        assert not mail.outbox
        return
    assert response.status_code in (200, 302), (action, role, response.status_code)
    effects: dict[str, Callable[[], bool]] = {
        "create": lambda: Campaign.objects.filter(name="Changed").exists(),
        "edit": lambda: after.name == "Changed",
        "submit": lambda: after.status == Campaign.Status.IN_REVIEW,
        "review": lambda: b"digest" in response.content,
        "eml": lambda: b"Message-ID:" in response.content,
        "recipients_csv": lambda: b"delivery_id" in b"".join(response.streaming_content),  # type: ignore[attr-defined]
        "approve": lambda: after.status in (Campaign.Status.APPROVED, Campaign.Status.SENDING),
        "reject": lambda: after.status == Campaign.Status.DRAFT,
        "test_send": lambda: len(mail.outbox) == 1,
    }
    assert effects[action](), (action, role)


def test_transitions_refuse_get(olivia: User, rita: User, audience: list[User]) -> None:
    campaign = submitted(olivia, audience)
    for name in ("submit", "approve", "reject", "test_send"):
        assert login(rita).get(url(name, campaign)).status_code == 405


def test_transitions_need_csrf(olivia: User, audience: list[User]) -> None:
    campaign = make_campaign(olivia)
    client = Client(enforce_csrf_checks=True)
    client.force_login(olivia)
    assert client.post(url("submit", campaign)).status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


# --- Preview and send share one builder --------------------------------------------------------


def test_test_send_equals_the_preview_except_recipient_derived_headers(
    olivia: User, rita: User, audience: list[User]
) -> None:
    """The test message for a recipient is the previewed .eml for the same person, except the
    recipient itself (To, and what is derived from it: Message-ID, the unsubscribe link) and Date."""
    from campaigns.rendering import (
        build_message,
        recipient_for_delivery,
        recipient_for_test,
        render_eml,
    )

    campaign = submitted(olivia, audience)
    delivery = Delivery.objects.get(campaign=campaign, address="ann@example.org")
    # A staff member whose own data equals Ann's, test-sending to their seed address.
    rita.first_name, rita.last_name, rita.locale = "Ann", "Lee", "en"
    rita.save()
    preview = render_eml(
        build_message(campaign, recipient_for_delivery(delivery), send_time=preview_time(campaign))
    )
    test = render_eml(
        build_message(
            campaign, recipient_for_test(campaign, rita, rita.email), send_time=timezone_now()
        )
    )

    def normalized(raw: bytes, address: str) -> tuple[list[tuple[str, str]], str]:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        skip = {"To", "Date", "Message-ID", "List-Unsubscribe"}
        headers = [(k, str(v)) for k, v in parsed.items() if k not in skip]
        unsubscribe = re.search(r"<(https?://[^>]+)>", parsed["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
        bodies = "".join(
            part.get_content() for part in parsed.walk() if part.get_content_maintype() == "text"
        )
        return headers, bodies.replace(unsubscribe, "<unsubscribe>").replace(address, "<to>")

    preview_headers, preview_body = normalized(preview, "ann@example.org")
    test_headers, test_body = normalized(test, rita.email)
    # Boundaries derive from the Message-ID: compare the structure, not the boundary token.
    strip = re.compile(r'boundary="[^"]+"')
    assert [(k, strip.sub("", v)) for k, v in preview_headers] == [
        (k, strip.sub("", v)) for k, v in test_headers
    ]
    assert preview_body == test_body


def timezone_now() -> Any:
    from django.utils import timezone

    return timezone.now()


def test_review_shows_provider_payload_with_exactly_one_recipient(
    olivia: User, rita: User, audience: list[User], settings: Any
) -> None:
    import json

    settings.EMAIL_TRANSPORT = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {
        "POSTMARK_SERVER_TOKEN": "review-only",
        "POSTMARK_API_URL": "http://127.0.0.1:9/",
    }
    campaign = submitted(olivia, audience)
    response = login(rita).get(url("review", campaign))
    review = response.context["review"]
    assert review.samples and all(s.payload for s in review.samples)
    for sample in review.samples:
        payload = json.loads(sample.payload)
        assert email.utils.getaddresses([payload["To"]])[0][1] == sample.delivery.address
        assert len(email.utils.getaddresses([payload["To"]])) == 1
        assert "Cc" not in payload and "Bcc" not in payload
    assert "Provider payload" in response.content.decode()
    assert review.checks_pass


def test_every_seeded_delivery_parses_to_exactly_its_own_recipient() -> None:
    """1,000 seeded members with awkward names, submitted for real: every message that would
    leave names exactly its delivery's address, and nobody else's address appears anywhere."""
    from django.core.management import call_command

    from campaigns.rendering import build_message, recipient_for_delivery, render_eml

    call_command("seed_demo", users=1000, verbosity=0)
    olivia = User.objects.get(username="olivia")
    campaign = Campaign.objects.get(name="Quarterly platform update")
    campaign = services.submit_for_review(campaign, by=olivia)
    deliveries = list(Delivery.objects.filter(campaign=campaign))
    assert len(deliveries) == campaign.recipient_count >= 1000
    everyone = {d.address.lower() for d in deliveries}
    address_like = re.compile(r"[\w.'+-]+@[\w-]+(?:\.[\w-]+)+")
    send_time = preview_time(campaign)
    recipient_headers = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")
    for delivery in deliveries:
        raw = render_eml(
            build_message(campaign, recipient_for_delivery(delivery), send_time=send_time)
        )
        legacy = email.message_from_bytes(raw, policy=email.policy.compat32)
        found = email.utils.getaddresses(
            [v for h in recipient_headers for v in legacy.get_all(h, [])]
        )
        assert [addr.lower() for _, addr in found] == [delivery.address.lower()], (
            delivery.address,
            found,
        )
        modern = email.message_from_bytes(raw, policy=email.policy.default)
        strict = [
            a.addr_spec
            for h in recipient_headers
            for v in modern.get_all(h, [])
            for a in v.addresses
        ]
        assert [a.lower() for a in strict] == [delivery.address.lower()]
        # A display name that looks like an address must not put a second one in To.
        in_to = {m.lower() for m in address_like.findall(str(modern["To"]))}
        assert in_to == {delivery.address.lower()}, (delivery.address, str(modern["To"]))
        text = "".join(
            part.get_content() for part in modern.walk() if part.get_content_maintype() == "text"
        )
        visible = raw.decode("ascii", "replace") + text + str(modern["To"])
        foreign = {m.lower() for m in address_like.findall(visible)} & everyone - {
            delivery.address.lower()
        }
        assert not foreign, (delivery.address, foreign)
