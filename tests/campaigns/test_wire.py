"""The direct writer gives exactly Django's bytes, so preview, guard and send read one thing."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.mail import BadHeaderError, EmailMessage, EmailMultiAlternatives

from campaigns import wire
from campaigns.guard.addresses import message_bytes
from campaigns.rendering import (
    CampaignMessage,
    Recipient,
    build_message,
    encode_subject,
    format_address,
    render_eml,
)
from tests.factories import make_campaign

SEND_TIME = datetime(2025, 3, 4, 9, 30, 15, tzinfo=UTC)

SUBJECTS = [
    "Spring news",
    "x" * 69,
    "x" * 70,  # one past the plain-line fast path: Django's Header() fold
    " ".join(["word"] * 30),  # long, folds at spaces
    "double  space and trailing ",
    "tab\there",
    "=?utf-8?q?looks_encoded?=",
    "Zoë's news",
    "山田 太郎 " * 12,
    "control \x01 char",
    "",
]
NAMES = ["", "Ada Lovelace", "Smith, John", 'Jane "JJ"', "Zoë", "山田 太郎" * 8, "O'Brien (work)"]
BODIES = [
    "Hello,\nplain text.\n",
    "No trailing newline",
    "Zoë über alles\n",
    "",
    "line\r\nwith CRLF\rand CR\n",
    "separator\u2028inside\n",
    "x" * 998 + "\n",
    "x" * 999 + "\n",  # quoted-printable in Django: the direct writer steps aside
    "a boundary look-alike\n--=_cs0123\n",
    "From the start of a line\n.\n..\n",
]
HTMLS = [None, "<p>Hi</p>\n", "<p>Zoë</p>", "<p>" + "y" * 1200 + "</p>\n"]


def campaign_message(rng: random.Random, index: int) -> CampaignMessage:
    token = "".join(rng.choice("AbCd0123_-:") for _ in range(rng.choice([10, 90, 160])))
    headers = {
        "Date": "Tue, 04 Mar 2025 09:30:15 -0000",
        "Message-ID": f"<c1.d{index}.{rng.getrandbits(48):012x}@mail.example>",
    }
    if rng.random() < 0.7:
        headers["List-Unsubscribe"] = (
            f"<https://countersign.example/u/{token}/>, "
            f"<mailto:unsubscribe@countersign.example?subject=unsubscribe%20{token}>"
        )
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message = CampaignMessage(
        subject=rng.choice(SUBJECTS),
        body=rng.choice(BODIES),
        from_email=format_address(rng.choice(NAMES), "news@countersign.example"),
        to=[format_address(rng.choice(NAMES), f"user{index}@b\u00fccher.example")],
        reply_to=["help@countersign.example"] if rng.random() < 0.5 else None,
        headers=headers,
        expected_recipient=f"user{index}@b\u00fccher.example",
        delivery_id=index,
        campaign_id=1,
    )
    html = rng.choice(HTMLS)
    if html is not None:
        message.attach_alternative(html, "text/html")
    return message


def simple_message() -> CampaignMessage:
    message = CampaignMessage(
        subject="Spring news",
        body="Hello Zoë,\nour update.\n",
        from_email="news@countersign.example",
        to=["Zoe <zoe@example.org>"],
        headers={"Date": "Tue, 04 Mar 2025 09:30:15 -0000", "Message-ID": "<c1.d1.x@m.example>"},
        expected_recipient="zoe@example.org",
        delivery_id=1,
        campaign_id=1,
    )
    message.attach_alternative("<p>Hello Zoë</p>\n", "text/html")
    assert direct(message) is not None
    return message


def direct(message: CampaignMessage) -> bytes | None:
    return wire.direct_bytes(
        message,
        subject=encode_subject(str(message.subject)),
        boundary_seed=str(message.extra_headers["Message-ID"]),
    )


def django_bytes(message: EmailMessage) -> bytes:
    raw: bytes = message.message().as_bytes(linesep="\r\n")
    return raw


def test_generated_messages_serialize_exactly_as_django_does() -> None:
    rng = random.Random(20261202)
    written_directly = 0
    for index in range(1500):
        message = campaign_message(rng, index)
        expected = django_bytes(message)
        assert message.wire_bytes() == expected, index
        texts = [str(message.body), *(str(a[0]) for a in message.alternatives)]
        quoted_printable = any(len(line) > 998 for text in texts for line in text.splitlines())
        html_only = not message.body and bool(message.alternatives)
        # Only what Django encodes as quoted-printable, or an HTML part without a text part
        # (Django then leaves the text part out), steps aside: the comparison above really
        # covers the direct writer.
        assert (direct(message) is None) == (quoted_printable or html_only), index
        written_directly += direct(message) is not None
    assert written_directly > 900


@pytest.mark.django_db
def test_built_messages_for_awkward_recipients_match_django(
    make_member: Callable[..., Any], olivia: Any, settings: Any
) -> None:
    settings.PUBLIC_BASE_URL = "https://countersign.example"
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@countersign.example"
    campaign = make_campaign(olivia, subject_template="News for {{ first_name }}")
    for delivery_id, name in enumerate([*NAMES, "Ann-Marie", "A" * 80, "Ünïcödé " * 20], 1):
        recipient = Recipient(
            address=f"r{delivery_id}@example.org",
            display_name=name,
            data={"first_name": name or "there"},
            delivery_id=delivery_id,
            user_id=None,
        )
        message = build_message(campaign, recipient, send_time=SEND_TIME)
        assert direct(message) is not None, name
        assert render_eml(message) == message_bytes(message) == django_bytes(message), name


def test_a_multiline_subject_is_refused_as_django_refuses_it() -> None:
    message = campaign_message(random.Random(1), 1)
    for subject in ("two\nlines", "Zoë\r\nBcc: x@example.org"):
        message.subject = subject
        with pytest.raises(BadHeaderError):
            message.message()
        with pytest.raises(BadHeaderError):
            message.wire_bytes()


def test_other_shapes_take_djangos_path() -> None:
    message = simple_message()
    message.attach("a.txt", "attached", "text/plain")
    assert direct(message) is None
    assert message.wire_bytes() == django_bytes(message)

    message = simple_message()
    message.to.append("other@example.org")
    assert direct(message) is not None  # two in To: written as Django writes them
    assert message.wire_bytes() == django_bytes(message)
    message.cc = ["third@example.org"]  # what the guard refuses anyway
    assert direct(message) is None
    assert message.wire_bytes() == django_bytes(message)

    message = simple_message()
    message.extra_headers["Content-Type"] = "text/plain"
    assert direct(message) is None

    # Plain Django messages (notifications) have no direct writer at all.
    plain = EmailMultiAlternatives("Hi", "Body\n", "a@example.org", ["b@example.org"])
    assert not hasattr(plain, "wire_bytes")
    assert message_bytes(plain).startswith(b"Content-Type: ")


def test_folding_by_outline_equals_compat32_for_every_value() -> None:
    """A folded header is written from its outline's plan, not folded again: the plan must
    give exactly what compat32 gives for each value, including a second value of the same
    outline with other characters (that one is written from the plan alone)."""
    rng = random.Random(20261202)
    wire._FOLD_PLANS.clear()
    alphabet = "abcxyzXY019=<>/:?@._-\"'()[]!~"
    fold_points = " ,;"
    names = ["List-Unsubscribe", "X", "Content-Type", "X-Very-Long-Header-Name-Of-Its-Own", "Tx"]
    checked = reused = 0
    for _ in range(3000):
        length = rng.choice([60, 75, 76, 77, 78, 79, 80, 120, 200, 400])
        density = rng.choice([0.0, 0.02, 0.1, 0.4])
        outline = [rng.choice(fold_points) if rng.random() < density else "" for _ in range(length)]
        name = rng.choice(names)
        for _variant in range(2):
            value = "".join(point or rng.choice(alphabet) for point in outline)
            before = len(wire._FOLD_PLANS)
            assert wire.header_line(name, value) == wire._COMPAT32.fold(name, value), (
                name,
                value,
            )
            checked += 1
            reused += len(wire._FOLD_PLANS) == before and before > 0
    assert checked == 6000
    assert reused > 2500  # the second value of each outline came from the plan


def test_values_outside_printable_ascii_are_folded_as_they_are() -> None:
    for value in ["tab\there " * 12, "a\x0bb " * 30, "a\x1cb " * 30, "trailing  " * 12]:
        assert wire.header_line("Subject", value) == wire._COMPAT32.fold("Subject", value)
