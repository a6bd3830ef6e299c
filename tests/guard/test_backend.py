"""The guarded backend as a whole: every bad message, every real transport, one connection."""

from __future__ import annotations

import email
from collections.abc import Callable
from email import policy
from pathlib import Path
from typing import Any

import pytest
from anymail.signals import pre_send
from django.core.mail import EmailMessage, get_connection
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import User
from campaigns.backends import GuardedBackend
from campaigns.guard.vocabulary import GuardViolation
from tests.guard.conftest import (
    ANN,
    BAD_MESSAGES,
    BCC_SEND_DEFAULTS,
    BOB,
    GUARDED,
    SENDER,
    DeliveryMessage,
    SinkHandler,
    Transport,
    delivery_message,
    guard_events,
    second_recipient_in_bcc,
    send,
    two_recipients_in_to,
)
from tests.postmark_stub import PostmarkStub

pytestmark = pytest.mark.django_db


# --- the whole guard: every bad message, every transport ------------------------------------


@pytest.mark.parametrize("transport_name", ["outbox", "smtp", "postmark"])
@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_guard_sends_nothing_for_a_bad_message(
    case: str,
    transport_name: str,
    transport_factory: Callable[..., Transport],
    bob: User,
) -> None:
    anymail = BCC_SEND_DEFAULTS if case == "bcc_send_default" else {}
    transport = transport_factory(transport_name, **anymail)
    with pytest.raises(GuardViolation) as blocked:
        send(BAD_MESSAGES[case]())
    assert transport.delivered() == []
    events = guard_events()
    assert len(events) == 1
    assert events[0]["layer"] == blocked.value.layer
    assert events[0]["delivery_id"] == 1 and events[0]["campaign_id"] == 7
    assert events[0]["sent"] is False


@pytest.mark.parametrize("transport_name", ["outbox", "smtp", "postmark"])
def test_guard_sends_a_good_message_to_exactly_its_recipient(
    transport_name: str, transport_factory: Callable[..., Transport], bob: User
) -> None:
    transport = transport_factory(transport_name)
    assert send(delivery_message()) == 1
    (delivered,) = transport.delivered()
    assert delivered.recipients == [ANN]
    assert BOB not in delivered.raw
    assert guard_events() == []


def test_smtp_sink_gets_exactly_one_rcpt_for_a_good_message(
    smtp_sink: SinkHandler, bob: User
) -> None:
    assert send(delivery_message()) == 1
    assert smtp_sink.rcpts == [ANN]
    parsed = email.message_from_string(smtp_sink.received[0].raw, policy=policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == [ANN]
    assert parsed["Cc"] is None and parsed["Bcc"] is None


@pytest.mark.parametrize(
    "display_name",
    [
        "Ann " * 30,  # folded across lines when serialized
        '"Smith, John"',
        "=?utf-8?b?Wm/DqyDDnG5hbA==?=",  # an encoded name, as rendering writes non-ASCII
    ],
)
def test_smtp_delivers_long_and_encoded_display_names_to_one_rcpt(
    display_name: str, smtp_sink: SinkHandler
) -> None:
    assert send(delivery_message(to=[f"{display_name.strip()} <{ANN}>"])) == 1
    assert smtp_sink.rcpts == [ANN]


def test_postmark_receives_one_recipient_in_the_posted_json(stub: PostmarkStub) -> None:
    with stub.configured():
        assert send(delivery_message()) == 1
    (posted,) = stub.requests
    assert posted.path == "/email"
    assert posted.json["To"] == f"Ann Example <{ANN}>"
    assert not {"Cc", "Bcc", "Messages"} & set(posted.json)
    assert posted.json["Metadata"] == {"delivery_id": "1", "campaign_id": "7"}


def test_one_bad_message_in_a_call_stops_the_whole_call(smtp_sink: SinkHandler, bob: User) -> None:
    with pytest.raises(GuardViolation):
        GuardedBackend().send_messages([delivery_message(), two_recipients_in_to()])
    assert smtp_sink.received == []


def test_fail_silently_does_not_silence_the_guard(outbox_dir: Path, bob: User) -> None:
    with pytest.raises(GuardViolation):
        send(second_recipient_in_bcc(), fail_silently=True)
    assert not outbox_dir.exists() or list(outbox_dir.iterdir()) == []
    assert len(guard_events()) == 1


def test_mail_that_is_not_a_campaign_delivery_also_needs_exactly_one_recipient(
    outbox_dir: Path, settings: SettingsWrapper
) -> None:
    settings.EMAIL_BACKEND = GUARDED
    notice = EmailMessage(
        "Review requested", "Campaign 7 awaits you.", SENDER, ["rita@example.com"]
    )
    assert notice.send() == 1
    with pytest.raises(GuardViolation) as blocked:
        EmailMessage(
            "Review requested", "x", SENDER, ["rita@example.com", "root@example.com"]
        ).send()
    assert blocked.value.layer == "recipients"
    assert blocked.value.delivery_id is None
    assert len(list(outbox_dir.iterdir())) == 1


def test_the_connection_is_reused_across_messages(smtp_sink: SinkHandler, bob: User) -> None:
    with get_connection(GUARDED) as connection:
        for _ in range(3):
            assert connection.send_messages([delivery_message()]) == 1
    assert len(smtp_sink.received) == 3
    assert len(smtp_sink.sessions) == 1


def test_the_payload_is_checked_again_when_it_is_posted(stub: PostmarkStub, bob: User) -> None:
    """A pre_send receiver that adds a bcc after the checks is caught at the post itself."""

    def add_bcc(sender: Any, message: EmailMessage, **kwargs: Any) -> None:
        message.bcc = [BOB]

    pre_send.connect(add_bcc, weak=False)
    try:
        with stub.configured(), pytest.raises(GuardViolation) as blocked:
            send(delivery_message())
    finally:
        pre_send.disconnect(add_bcc)
    assert blocked.value.layer == "anymail-payload"
    assert stub.requests == []
    assert [event["layer"] for event in guard_events()] == ["anymail-payload"]


class RecipientsChangeAfterTheCheck(DeliveryMessage):
    """Reports one recipient when the guard first asks, two when the transport asks."""

    calls = 0

    def recipients(self) -> list[str]:
        self.calls += 1
        return [ANN] if self.calls == 1 else [ANN, BOB]


def test_the_smtp_envelope_is_checked_again_at_sendmail(smtp_sink: SinkHandler) -> None:
    message = RecipientsChangeAfterTheCheck(
        "Update", "Hello", SENDER, [ANN], headers={"Message-ID": "<x@countersign.test>"}
    )
    message.expected_recipient = ANN
    with pytest.raises(GuardViolation) as blocked:
        send(message)
    assert blocked.value.layer == "smtp-envelope"
    assert "2 recipients" in blocked.value.reason
    assert smtp_sink.rcpts == []
