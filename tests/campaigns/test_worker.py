"""The fan-out in one process: claims, fenced outcomes, operator controls, the sweeper.

The real-worker, real-SMTP and real-HTTP runs live in tests/integration/test_sending.py;
here `send_batch` is called directly so every branch can be driven precisely.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone

from accounts.models import User
from audit.models import AuditEvent
from campaigns import services, worker
from campaigns.models import Campaign, Delivery, IllegalTransition, SendingSwitch, Suppression
from campaigns.permissions import PermissionRefused
from campaigns.ratelimit import DatabaseBucket, RedisBucket
from campaigns.suppressions import add_suppression
from tests.conftest import make_staff
from tests.factories import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast(settings: Any) -> None:
    settings.EMAIL_TRANSPORT = "django.core.mail.backends.locmem.EmailBackend"
    settings.SEND_RATE_PER_SECOND = 10_000.0
    settings.SEND_BURST = 10_000
    settings.REDIS_URL = ""


@pytest.fixture
def members(make_member: Callable[..., User]) -> list[User]:
    names = ["Smith, John", 'Jane "JJ"', "Zoë", "山田 太郎", "Ann"]
    return [make_member(f"m{i}@example.org", first_name=name) for i, name in enumerate(names)]


def approved(author: User, reviewer: User, **fields: Any) -> Campaign:
    campaign = services.submit_for_review(make_campaign(author, **fields), by=author)
    services.approve_campaign(campaign, by=reviewer, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    return campaign


def statuses(campaign: Campaign) -> dict[str, int]:
    return worker.delivery_summary(campaign.pk)


class ScriptedTransport(BaseEmailBackend):
    """A transport whose answer per message is scripted: None sends, an exception fails."""

    script: list[BaseException | None] = []
    sent: list[EmailMessage] = []

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            outcome = ScriptedTransport.script.pop(0) if ScriptedTransport.script else None
            if outcome is not None:
                raise outcome
            ScriptedTransport.sent.append(message)
        return len(email_messages)


@pytest.fixture
def scripted(settings: Any) -> type[ScriptedTransport]:
    settings.EMAIL_TRANSPORT = "tests.campaigns.test_worker.ScriptedTransport"
    ScriptedTransport.script = []
    ScriptedTransport.sent = []
    return ScriptedTransport


# --- Launch and the happy path -----------------------------------------------------------------


def test_approval_launches_and_dispatches_after_commit(
    olivia: User, rita: User, members: list[User], django_capture_on_commit_callbacks: Any
) -> None:
    campaign = services.submit_for_review(make_campaign(olivia), by=olivia)
    with django_capture_on_commit_callbacks() as callbacks:
        services.approve_campaign(campaign, by=rita, digest=campaign.frozen_digest)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    # Notification to the author plus the batch dispatches: nothing enqueued before commit.
    assert len(callbacks) >= 2


def test_batch_sends_one_message_per_recipient(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    mail.outbox.clear()
    result = worker.send_batch(campaign.pk, limit=100)
    assert result.sent == len(members)
    assert len(mail.outbox) == len(members)
    seen = []
    for message in mail.outbox:
        parsed = email.message_from_bytes(message.message().as_bytes(), policy=email.policy.default)
        to = [a.addr_spec for a in parsed["To"].addresses]
        assert len(to) == 1 and parsed["Cc"] is None and parsed["Bcc"] is None
        seen.append(to[0])
    assert sorted(seen) == sorted(m.email for m in members)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    rows = Delivery.objects.filter(campaign=campaign)
    assert {d.status for d in rows} == {Delivery.Status.SENT}
    assert all(d.message_id.startswith("<c") and d.attempts == 1 for d in rows)
    assert AuditEvent.objects.filter(action="campaign.sent", object_id=str(campaign.pk)).exists()


def test_scheduled_campaign_waits_for_the_poller(
    olivia: User, rita: User, members: list[User]
) -> None:
    later = timezone.now() + timedelta(hours=1)
    campaign = approved(olivia, rita, scheduled_at=later)
    assert campaign.status == Campaign.Status.APPROVED
    assert worker.launch_scheduled(now=timezone.now()) == 0
    assert worker.launch_scheduled(now=later + timedelta(seconds=1)) == 1
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING


# --- Claims and fencing ------------------------------------------------------------------------


def test_claims_are_disjoint(olivia: User, rita: User, members: list[User]) -> None:
    campaign = approved(olivia, rita)
    _, first = worker.claim_deliveries(campaign.pk, limit=3)
    _, second = worker.claim_deliveries(campaign.pk, limit=3)
    assert len(first) == 3 and len(second) == 2
    assert not set(first) & set(second)


def test_fenced_update_refuses_a_stale_claim(olivia: User, rita: User, members: list[User]) -> None:
    campaign = approved(olivia, rita)
    token, ids = worker.claim_deliveries(campaign.pk, limit=1)
    assert worker.release_claims(token, campaign.pk) == 1
    assert not worker._fenced(ids[0], token, Delivery.Status.CLAIMED, status=Delivery.Status.SENT)
    assert Delivery.objects.get(pk=ids[0]).status == Delivery.Status.PENDING


def test_chunk_writes_touch_only_rows_still_ours_and_record_each_rows_values(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    token, ids = worker.claim_deliveries(campaign.pk, limit=5)
    deliveries = list(Delivery.objects.filter(pk__in=ids).order_by("id"))
    # Someone else took the second row meanwhile (the sweeper after a lease, say).
    Delivery.objects.filter(pk=ids[1]).update(status=Delivery.Status.PENDING, claim_token=None)
    messages = [EmailMessage(headers={"Message-ID": f"<m{d.pk}@x.example>"}) for d in deliveries]
    ready = worker._mark_sending(
        list(zip(deliveries, messages, strict=True)), token, timezone.now()
    )
    assert [d.pk for d, _ in ready] == [ids[0], *ids[2:]]
    rows = {d.pk: d for d in Delivery.objects.filter(pk__in=ids)}
    assert rows[ids[1]].status == Delivery.Status.PENDING and rows[ids[1]].message_id == ""
    for pk in (ids[0], *ids[2:]):
        assert rows[pk].status == Delivery.Status.SENDING and rows[pk].attempts == 1
        assert rows[pk].message_id == f"<m{pk}@x.example>"

    # Recorded sent with each row's own note and provider id; a row no longer `sending`
    # (resolved by an operator meanwhile) is left alone.
    Delivery.objects.filter(pk=ids[4]).update(status=Delivery.Status.UNKNOWN)
    worker._mark_sent(
        [(d, f"note {d.pk}" if d.pk == ids[2] else "", f"pm-{d.pk}") for d, _ in ready], token
    )
    rows = {d.pk: d for d in Delivery.objects.filter(pk__in=ids)}
    assert rows[ids[4]].status == Delivery.Status.UNKNOWN and rows[ids[4]].sent_at is None
    for pk in (ids[0], ids[2], ids[3]):
        assert rows[pk].status == Delivery.Status.SENT and rows[pk].claim_token is None
        assert rows[pk].provider_message_id == f"pm-{pk}" and rows[pk].sent_at is not None
        assert rows[pk].last_error == (f"note {pk}" if pk == ids[2] else "")


# --- Outcomes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError("refused"), Delivery.Status.RETRY_WAIT),
        (
            smtplib.SMTPRecipientsRefused({"x@example.org": (550, b"no such user")}),
            Delivery.Status.FAILED,
        ),
        (
            smtplib.SMTPRecipientsRefused({"x@example.org": (450, b"try later")}),
            Delivery.Status.RETRY_WAIT,
        ),
        (smtplib.SMTPDataError(554, b"rejected"), Delivery.Status.FAILED),
        (smtplib.SMTPDataError(451, b"later"), Delivery.Status.RETRY_WAIT),
        (smtplib.SMTPServerDisconnected("gone after DATA"), Delivery.Status.UNKNOWN),
        (TimeoutError("read timed out"), Delivery.Status.UNKNOWN),
        (RuntimeError("something odd"), Delivery.Status.UNKNOWN),
    ],
)
def test_send_failures_land_in_the_right_state(
    error: BaseException,
    expected: str,
    olivia: User,
    rita: User,
    make_member: Callable[..., User],
    scripted: type[ScriptedTransport],
) -> None:
    make_member("only@example.org", first_name="Only")
    campaign = approved(olivia, rita)
    scripted.script = [error]
    worker.send_batch(campaign.pk)
    delivery = Delivery.objects.get(campaign=campaign)
    assert delivery.status == expected
    assert delivery.attempts == 1 and delivery.last_error
    if expected == Delivery.Status.RETRY_WAIT:
        assert delivery.next_attempt_at is not None
        wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
        assert 0 < wait <= worker.BACKOFF_BASE_SECONDS * 1.5 + 1
    if expected == Delivery.Status.FAILED and isinstance(error, smtplib.SMTPRecipientsRefused):
        assert Suppression.objects.filter(address="only@example.org", reason="hard_bounce").exists()


def test_retry_follows_the_rows_backoff_and_then_sends(
    olivia: User, rita: User, make_member: Callable[..., User], scripted: type[ScriptedTransport]
) -> None:
    make_member("later@example.org")
    campaign = approved(olivia, rita)
    scripted.script = [ConnectionRefusedError("down")]
    worker.send_batch(campaign.pk)
    delivery = Delivery.objects.get(campaign=campaign)
    assert delivery.status == Delivery.Status.RETRY_WAIT
    # Not due yet: nothing is claimed.
    assert worker.send_batch(campaign.pk).claimed == 0
    Delivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    worker.send_batch(campaign.pk)
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT and delivery.attempts == 2
    assert len(scripted.sent) == 1


def test_backoff_grows_and_is_jittered() -> None:
    import random

    rng = random.Random(7)
    waits = [worker.backoff_seconds(n, rng) for n in range(1, 8)]
    assert all(
        0.5 * 30 * 2 ** (n - 1) <= w <= 1.5 * min(3600, 30 * 2 ** (n - 1))
        for n, w in enumerate(waits, 1)
    )
    assert len({round(w, 3) for w in waits}) == len(waits)


def test_missing_placeholder_fails_that_delivery_only(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    make_member("named@example.org", first_name="Named")
    make_member("nameless@example.org", first_name="")
    campaign = approved(olivia, rita, subject_template="Hello {{ first_name }}")
    worker.send_batch(campaign.pk)
    by_address = {d.address: d for d in Delivery.objects.filter(campaign=campaign)}
    assert by_address["named@example.org"].status == Delivery.Status.SENT
    assert by_address["nameless@example.org"].status == Delivery.Status.FAILED
    assert "first_name" in by_address["nameless@example.org"].last_error


# --- Suppression at send time ------------------------------------------------------------------


def test_suppressed_after_approval_is_skipped(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    add_suppression(members[0].email, Suppression.Reason.COMPLAINT, source="test")
    worker.send_batch(campaign.pk, limit=100)
    skipped = Delivery.objects.get(campaign=campaign, address=members[0].email)
    assert skipped.status == Delivery.Status.SKIPPED
    assert members[0].email not in [m.to[0] for m in mail.outbox]


def test_unsubscribed_user_still_gets_a_service_notice(
    olivia: User, rita: User, make_member: Callable[..., User]
) -> None:
    member = make_member("gone@example.org")
    add_suppression(member.email, Suppression.Reason.UNSUBSCRIBED, source="test")
    announcement = make_campaign(olivia, name="News")
    with pytest.raises(IllegalTransition, match="empty"):
        services.submit_for_review(announcement, by=olivia)
    notice = approved(
        olivia,
        rita,
        name="Security notice",
        category=Campaign.Category.SERVICE_NOTICE,
        subject_template="Security notice",
        text_template="Please review your account.",
        html_template="",
    )
    worker.send_batch(notice.pk)
    assert Delivery.objects.get(campaign=notice).status == Delivery.Status.SENT


# --- Operator controls -------------------------------------------------------------------------


class PausingTransport(BaseEmailBackend):
    """Sends, and after the first message someone pauses the campaign from elsewhere."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        mail.outbox.extend(email_messages)
        Campaign.objects.filter(status=Campaign.Status.SENDING).update(
            status=Campaign.Status.PAUSED
        )
        return len(email_messages)


def test_pause_stops_before_the_next_message_and_resume_continues(
    olivia: User, rita: User, members: list[User], settings: Any
) -> None:
    campaign = approved(olivia, rita)
    settings.EMAIL_TRANSPORT = "tests.campaigns.test_worker.PausingTransport"
    # No staleness allowed: the state is read again before the very next message.
    settings.SEND_STATE_RECHECK_SECONDS = 0
    mail.outbox.clear()
    result = worker.send_batch(campaign.pk, limit=100)
    assert result.sent == 1 and result.stopped == "paused"
    assert len(mail.outbox) == 1
    assert statuses(campaign) == {"sent": 1, "pending": len(members) - 1}
    settings.EMAIL_TRANSPORT = "django.core.mail.backends.locmem.EmailBackend"
    services.resume_campaign(campaign, by=rita)
    worker.send_batch(campaign.pk, limit=100)
    assert statuses(campaign) == {"sent": len(members)}
    assert len(mail.outbox) == len(members)


def test_the_state_is_read_again_once_the_interval_has_passed(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    now = [100.0]
    watch = worker.StateWatch(campaign.pk, interval=0.25, clock=lambda: now[0])
    assert watch.current() == "" and watch.reads == 1
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.PAUSED)
    now[0] += 0.2
    # Within the interval the last reading stands: no query per message.
    assert watch.current() == "" and watch.reads == 1
    now[0] += 0.05
    assert watch.current() == "paused" and watch.reads == 2
    SendingSwitch.objects.update_or_create(pk=1, defaults={"halted": True})
    assert watch.fresh() == "emergency stop" and watch.reads == 3


def test_cancel_skips_the_rest(olivia: User, oscar: User, rita: User, members: list[User]) -> None:
    campaign = approved(olivia, rita)
    worker.send_batch(campaign.pk, limit=2)
    services.cancel_campaign(campaign, by=oscar)
    assert worker.send_batch(campaign.pk).claimed == 0
    assert statuses(campaign) == {"sent": 2, "skipped": len(members) - 2}
    assert AuditEvent.objects.filter(action="campaign.cancelled").exists()


def test_emergency_stop_halts_every_campaign(olivia: User, rita: User, members: list[User]) -> None:
    first = approved(olivia, rita)
    second = approved(olivia, rita, name="Second")
    services.set_emergency_stop(by=rita, halted=True, reason="drill")
    mail.outbox.clear()
    assert worker.send_batch(first.pk).stopped and worker.send_batch(second.pk).stopped
    assert not mail.outbox
    services.set_emergency_stop(by=rita, halted=False)
    assert not SendingSwitch.is_halted()
    worker.send_batch(first.pk, limit=100)
    assert statuses(first) == {"sent": len(members)}


def test_ops_cannot_use_the_emergency_stop_or_resolve_unknown(olivia: User, oscar: User) -> None:
    with pytest.raises(PermissionRefused):
        services.set_emergency_stop(by=oscar, halted=True)
    assert not SendingSwitch.is_halted()


def test_operator_controls_by_crafted_requests(
    olivia: User, rita: User, members: list[User]
) -> None:
    from django.test import Client
    from django.urls import reverse

    campaign = approved(olivia, rita, scheduled_at=timezone.now() + timedelta(days=1))
    nobody = make_staff("nobody")
    for user, expected in ((nobody, 403), (olivia, 302)):
        client = Client()
        client.force_login(user)
        response = client.post(reverse("admin:campaigns_campaign_pause", args=[campaign.pk]))
        assert response.status_code == expected
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED and campaign.paused_by == olivia
    client = Client()
    client.force_login(olivia)
    assert (
        client.get(reverse("admin:campaigns_campaign_resume", args=[campaign.pk])).status_code
        == 405
    )
    stop = client.post(reverse("campaigns_emergency_stop"), {"action": "halt"})
    assert stop.status_code == 403 and not SendingSwitch.is_halted()
    client.force_login(rita)
    client.post(reverse("campaigns_emergency_stop"), {"action": "halt", "reason": "drill"})
    assert SendingSwitch.is_halted()


# --- Unknown: only an operator decides ---------------------------------------------------------


def test_unknown_waits_for_an_audited_decision(
    olivia: User, rita: User, make_member: Callable[..., User], scripted: type[ScriptedTransport]
) -> None:
    make_member("a@example.org")
    make_member("b@example.org")
    campaign = approved(olivia, rita)
    scripted.script = [TimeoutError("read timed out"), TimeoutError("read timed out")]
    worker.send_batch(campaign.pk)
    assert statuses(campaign) == {"unknown": 2}
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT  # nothing open; the page shows the unknowns
    # The sweeper never resends on its own.
    worker.sweep(now=timezone.now() + timedelta(days=1))
    assert statuses(campaign) == {"unknown": 2}
    a, b = Delivery.objects.filter(campaign=campaign).order_by("address")
    with pytest.raises(PermissionRefused):
        services.resolve_unknown(a, by=olivia, resend=True)
    services.resolve_unknown(a, by=rita, resend=True)
    services.resolve_unknown(b, by=rita, resend=False)
    worker.send_batch(campaign.pk)
    assert statuses(campaign) == {"sent": 2}
    assert len(scripted.sent) == 1
    assert AuditEvent.objects.filter(action="delivery.resend").count() == 1
    assert AuditEvent.objects.filter(action="delivery.marked_sent").count() == 1


# --- The sweeper -------------------------------------------------------------------------------


def test_sweeper_reclaims_expired_claims_and_flags_expired_sends(
    olivia: User, rita: User, members: list[User], django_capture_on_commit_callbacks: Any
) -> None:
    campaign = approved(olivia, rita)
    token, ids = worker.claim_deliveries(campaign.pk, limit=2)
    Delivery.objects.filter(pk=ids[1]).update(status=Delivery.Status.SENDING)
    later = timezone.now() + timedelta(seconds=10_000)
    with django_capture_on_commit_callbacks() as callbacks:
        result = worker.sweep(now=later)
    assert (result.reclaimed, result.unknown) == (1, 1)
    assert Delivery.objects.get(pk=ids[0]).status == Delivery.Status.PENDING
    assert Delivery.objects.get(pk=ids[1]).status == Delivery.Status.UNKNOWN
    # Due work and nobody holding it: the broker lost our message, so dispatch again.
    assert result.redispatched == 1 and callbacks


def test_digest_mismatch_pauses_before_sending(
    olivia: User, rita: User, members: list[User]
) -> None:
    campaign = approved(olivia, rita)
    # A change that bypassed the edit service (a bug, a raw query): the worker refuses it.
    Campaign.objects.filter(pk=campaign.pk).update(subject_template="Changed behind our back")
    mail.outbox.clear()
    result = worker.send_batch(campaign.pk)
    assert result.stopped == "digest mismatch" and not mail.outbox
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED and "digest" in campaign.pause_reason


# --- The shared rate limiter, with a controlled clock -----------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _exercise_bucket(make: Callable[[FakeClock], Any]) -> None:
    clock = FakeClock()
    first, second = make(clock), make(clock)  # two workers, one shared bucket
    # The burst is available at once, across both workers together.
    taken = [b.try_take() for b in (first, second, first, second, first)]
    assert taken[:4] == [0.0, 0.0, 0.0, 0.0]
    assert taken[4] == pytest.approx(0.5)  # 2 per second: half a second to the next token
    clock.now += 0.5
    assert second.try_take() == 0.0
    # Over 10 simulated seconds at 2/s, both workers together get 20 tokens, not 40.
    start = clock.now
    got = 0
    while clock.now - start < 10:
        for bucket in (first, second):
            if bucket.take(sleep=clock.sleep, max_wait=5):
                got += 1
    assert 19 <= got <= 21


def _exercise_blocks(make: Callable[[FakeClock, float], Any]) -> None:
    clock = FakeClock()
    # At 2/s a block is one token: a low limit is taken exactly as one token per message.
    slow = make(clock, 2.0)
    assert slow.block == 1 and slow.take(want=10, sleep=clock.sleep) == 1
    # At 1,000/s a block is what 10 ms of the rate gives: 10 tokens in one round trip.
    first, second = make(clock, 1000.0), make(clock, 1000.0)
    assert first.block == 10
    assert first.take(want=25, sleep=clock.sleep) == 10
    assert first.try_take_up_to(3) == (3, 0.0)
    # Blocks never take more than the bucket holds: both workers together, over half a
    # simulated second, get the burst (20) and 1,000/s, not a token more.
    start = clock.now
    got = 13
    while clock.now - start < 0.5:
        for bucket in (second, first):
            got += bucket.take(want=10, sleep=clock.sleep, max_wait=5)
    assert got <= 20 + 1000 * (clock.now - start) + 1
    assert got >= 1000 * (clock.now - start) - 10


def test_database_rate_limiter_is_shared_and_exact() -> None:
    _exercise_bucket(lambda clock: DatabaseBucket("test:db", rate=2.0, burst=4, clock=clock))
    _exercise_blocks(
        lambda clock, rate: DatabaseBucket(f"test:db:{rate}", rate=rate, burst=20, clock=clock)
    )


@pytest.mark.needs_redis
def test_redis_rate_limiter_is_shared_and_exact(settings: Any) -> None:
    import redis

    url = settings.CELERY_BROKER_URL if settings.CELERY_BROKER_URL.startswith("redis") else ""
    url = url or "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(url).delete("test:redis")
    _exercise_bucket(
        lambda clock: RedisBucket("test:redis", url=url, rate=2.0, burst=4, clock=clock)
    )
    redis.Redis.from_url(url).delete("test:redis:2.0", "test:redis:1000.0")
    _exercise_blocks(
        lambda clock, rate: RedisBucket(
            f"test:redis:{rate}", url=url, rate=rate, burst=20, clock=clock
        )
    )


# --- Late knowledge: provider events and the provider's own recipient list --------------------


def test_sweeper_settles_an_unknown_delivery_from_a_provider_event(
    olivia: User, rita: User, make_member: Callable[..., User], scripted: type[ScriptedTransport]
) -> None:
    from campaigns.models import ProviderEvent

    make_member("maybe@example.org")
    campaign = approved(olivia, rita)
    scripted.script = [TimeoutError("read timed out")]
    worker.send_batch(campaign.pk)
    delivery = Delivery.objects.get(campaign=campaign)
    assert delivery.status == Delivery.Status.UNKNOWN
    assert worker.sweep().settled == 0  # no evidence yet: it stays unknown
    ProviderEvent.objects.create(
        provider="postmark",
        event_id="evt-1",
        event_type="delivered",
        delivery=delivery,
        recipient=delivery.address,
    )
    assert worker.sweep().settled == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    assert AuditEvent.objects.filter(action="delivery.settled", object_id=str(delivery.pk)).exists()


def test_provider_reporting_other_recipients_records_sent_and_pauses(
    olivia: User, rita: User, make_member: Callable[..., User], scripted: type[ScriptedTransport]
) -> None:
    from campaigns.guard.vocabulary import GuardViolation

    make_member("first@example.org")
    make_member("second@example.org")
    campaign = approved(olivia, rita)
    scripted.script = [GuardViolation("post-send", "provider reported 2 recipients", sent=True)]
    result = worker.send_batch(campaign.pk)
    assert result.stopped == "paused"
    first, second = Delivery.objects.filter(campaign=campaign).order_by("id")
    # It left: recorded as sent, with the reason; nothing more goes out.
    assert first.status == Delivery.Status.SENT and "post-send" in first.last_error
    assert second.status == Delivery.Status.PENDING
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED and "post-send" in campaign.pause_reason


# --- per-chunk ledger writes and batch-level reads ------------------------------------------


class CountingTransport(BaseEmailBackend):
    """Sends, and notes how many rows of the ledger are `sending` and `sent` at each send."""

    in_flight: list[int] = []
    recorded: list[int] = []

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        CountingTransport.in_flight.append(
            Delivery.objects.filter(status=Delivery.Status.SENDING).count()
        )
        CountingTransport.recorded.append(
            Delivery.objects.filter(status=Delivery.Status.SENT).count()
        )
        mail.outbox.extend(email_messages)
        return len(email_messages)


def test_a_crash_at_any_moment_leaves_at_most_one_chunk_ambiguous(
    olivia: User, rita: User, make_member: Callable[..., User], settings: Any
) -> None:
    for i in range(23):
        make_member(f"chunk{i}@example.org")
    campaign = approved(olivia, rita)
    settings.SEND_CHUNK_SIZE = 5
    settings.EMAIL_TRANSPORT = "tests.campaigns.test_worker.CountingTransport"
    CountingTransport.in_flight = []
    CountingTransport.recorded = []
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        result = worker.send_batch(campaign.pk, limit=100)
    assert result.sent == 23 and statuses(campaign) == {"sent": 23}
    # A kill -9 during any send leaves the `sending` rows `unknown`: never more than a chunk.
    assert len(CountingTransport.in_flight) == 23
    assert max(CountingTransport.in_flight) == 5
    assert CountingTransport.in_flight[-1] == 3  # the last, short chunk
    # Every earlier chunk is recorded `sent` before the next one goes out.
    assert CountingTransport.recorded == [5 * (i // 5) for i in range(23)]
    if connection.vendor == "postgresql":
        # ... in the same statement as that chunk's `sending` mark: one commit per chunk.
        combined = [q for q in queries if ";\nUPDATE" in q["sql"]]
        assert len(combined) == 4, [q["sql"][:80] for q in queries]


def test_a_batch_reads_the_suppressions_once(
    olivia: User, rita: User, make_member: Callable[..., User], settings: Any
) -> None:
    for i in range(12):
        make_member(f"batch{i}@example.org")
    campaign = approved(olivia, rita)
    settings.SEND_STATE_RECHECK_SECONDS = 3600
    add_suppression("batch3@example.org", Suppression.Reason.MANUAL, source="test")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        result = worker.send_batch(campaign.pk, limit=100)
    assert result.sent == 11 and result.other == 1
    suppression_reads = [q for q in queries if "campaigns_suppression" in q["sql"]]
    assert len(suppression_reads) == 1
    # The campaign's state is looked at when the batch starts and then once per
    # SEND_STATE_RECHECK_SECONDS (here longer than the batch), not once per message; the
    # ledger is written per chunk. (The database rate limiter, used without Redis, has
    # its own queries per token.)
    state_reads = [q for q in queries if "campaigns_sendingswitch" in q["sql"]]
    others = [
        q for q in queries if "campaigns_ratebucket" not in q["sql"] and "SAVEPOINT" not in q["sql"]
    ]
    assert len(state_reads) == 2
    # The rest does not grow with the messages: claim, load, suppressions, attributes,
    # the ledger's UPDATEs per chunk (of 10), release, completion and its audit event.
    assert len(others) - len(state_reads) <= 20


def test_claim_reads_find_their_rows_through_the_campaigns_work_index(
    olivia: User, rita: User, members: list[User]
) -> None:
    """Every claim-token lookup names the campaign: without it PostgreSQL reads every
    status entry of every campaign the ledger ever held, once per batch."""
    campaign = approved(olivia, rita)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        token, ids = worker.claim_deliveries(campaign.pk, limit=3)
        assert worker.release_claims(token, campaign.pk) == 3
    by_token = [
        q["sql"] for q in queries if str(token).replace("-", "") in q["sql"].replace("-", "")
    ]
    assert len(by_token) >= 2
    for sql in by_token:
        assert '"campaign_id" = ' in sql, sql
