"""The one message builder: exactly one recipient, pinned headers, deterministic bytes."""

from __future__ import annotations

import email
import email.policy
import json
import re
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.message import EmailMessage as ParsedMessage
from email.message import Message
from email.utils import getaddresses
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core import signing

from accounts.models import AudienceAttribute, User
from campaigns.audience import recipient_data_for_user
from campaigns.digests import audience_hash, content_digest
from campaigns.models import Campaign, Delivery, SenderIdentity
from campaigns.rendering import (
    BuildError,
    CampaignMessage,
    Recipient,
    build_message,
    recipient_for_delivery,
    recipient_for_test,
    render_eml,
)
from campaigns.templating import MissingPlaceholder, TemplateSyntaxError, UnsafeHeaderValue
from campaigns.tokens import (
    UNSUBSCRIBE_SALT,
    InvalidToken,
    make_unsubscribe_token,
    read_unsubscribe_token,
    unsubscribe_url,
)

SEND_TIME = datetime(2025, 3, 4, 9, 30, 15, tzinfo=UTC)
BASE_URL = "https://countersign.example"
ADDRESS_HEADERS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")
ADDRESS_PATTERN = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+[A-Za-z0-9]")
# Characters a human would read as an address: the ASCII ones and their look-alikes.
ADDRESS_LOOKALIKES = set("@<>\uff20\ufe6b\uff1c\uff1e\ufe64\ufe65")


@pytest.fixture(autouse=True)
def rendering_settings(settings: Any) -> None:
    settings.PUBLIC_BASE_URL = BASE_URL
    settings.UNSUBSCRIBE_MAILTO = ""
    # The personas get real passwords; a fast hasher keeps fixture setup out of the timings.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def sender(db: None) -> SenderIdentity:
    return SenderIdentity.objects.create(
        name="Main",
        from_name="Countersign, the Team",
        from_address="news@countersign.example",
        reply_to="help@countersign.example",
        postal_address="Countersign Ltd\n1 Example Street\nSpringfield 12345",
        message_id_domain="mail.countersign.example",
    )


@pytest.fixture
def make_campaign(olivia: User, sender: SenderIdentity) -> Callable[..., Campaign]:
    def make(**fields: Any) -> Campaign:
        values: dict[str, Any] = {
            "name": "Spring update",
            "category": Campaign.Category.ANNOUNCEMENT,
            "sender": sender,
            "subject_template": 'Spring news for {{ first_name|default:"you" }}',
            "text_template": (
                'Hello {{ first_name|default:"there" }},\n\nOur spring update.\n'
                "Unsubscribe: {{ unsubscribe_url }}\n"
            ),
            "html_template": (
                '<p>Hello {{ first_name|default:"there" }},</p><p>Our spring update.</p>'
                '<p><a href="https://countersign.example/news">Read more</a></p>'
            ),
            "author": olivia,
        }
        values.update(fields)
        return Campaign.objects.create(**values)

    return make


def recipient(
    address: str = "ada@example.org",
    *,
    display_name: str = "Ada Lovelace",
    data: dict[str, str] | None = None,
    delivery_id: int | None = 41,
) -> Recipient:
    return Recipient(
        address=address,
        display_name=display_name,
        data={"first_name": "Ada", "last_name": "Lovelace", "email": address, "locale": "en"}
        if data is None
        else data,
        delivery_id=delivery_id,
        user_id=7,
    )


def parsed(raw: bytes) -> ParsedMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, ParsedMessage)
    return message


def body(message: ParsedMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    # The wire has CRLF line ends; compare text with plain newlines.
    return content.replace("\r\n", "\n")


def rfc2047_to(raw: bytes) -> str:
    """The To header decoded as RFC 2047 says (whitespace between encoded words dropped)."""
    legacy: Message = email.message_from_bytes(raw)
    value = re.sub(r"\r?\n[ \t]", " ", str(legacy["To"]))
    return str(make_header(decode_header(value)))


def legacy_recipients(raw: bytes) -> list[tuple[str, str]]:
    """Every address across the recipient headers, as the legacy (pre-strict) parser sees it."""
    legacy: Message = email.message_from_bytes(raw)
    values: list[str] = []
    for header in ADDRESS_HEADERS:
        values.extend(re.sub(r"\r?\n[ \t]", " ", str(v)) for v in legacy.get_all(header) or [])
    return getaddresses(values)


# --- One recipient, whatever their name ------------------------------------------------------


def awkward_name(index: int, others: list[str]) -> str:
    other = others[(index * 7 + 3) % len(others)]
    another = others[(index * 13 + 5) % len(others)]
    patterns = [
        f"Smith, John {index}",
        f'"Quoted" O\'Brien, Jr. {index}',
        f'Evil " <{other}>',
        f"Zoë Ångström-Łukasiewicz Ñoño {index}",
        "L" + "o" * 190 + f"ng {index:06d}",
        "名前" * 100,
        other,
        f"Eve <{other}>",
        f"{other}, {another}",
        f"Party 🎉 Pooper 👩‍👩‍👧 {index}",
        f"Back\\slash; semi: colon {index}",
        f"(comment) [bracket] {index}",
        "=?utf-8?q?Mallory=2C_Inc=2E?= <" + other + ">",
        f"=?utf-8?b?U21pdGgsIEpvaG4=?= {index}",
        f"Tab\there {index}",
        f"Bob\r\nBcc: {other}",
        f"Null\x00 byte {index}",
        f"Line\u2028separator {index}",
        f"Full\uff20width {index}",
        f"undisclosed-recipients:; {index}",
        f"Group: {other};",
        "",
        "   ",
        f"  Padded Name {index}  ",
        f"Ünïcødé,{index};«»“”‘’",
        f"rtl \u202eevil\u202c {index}",
    ]
    return patterns[index % len(patterns)]


def expected_display_name(name: str) -> str:
    """What the builder must do with a name: keep it (stripped) or drop it."""
    normalized = unicodedata.normalize("NFKC", name)
    control = any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in name)
    # Bidi overrides reorder what a reader sees: such a name is not shown at all.
    bidi = any(c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069" for c in name)
    if (
        control
        or bidi
        or ADDRESS_LOOKALIKES.intersection(name)
        or ADDRESS_LOOKALIKES.intersection(normalized)
    ):
        return ""
    return name.strip()


def test_a_thousand_awkward_names_each_parse_as_exactly_their_one_recipient(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    addresses = [f"member{index:04d}@audience{index % 9}.example" for index in range(1000)]
    everyone = set(addresses)
    # CPU time of this process: other load on a shared machine must not fail the test.
    started = time.process_time()
    kept_names = 0
    for index, address in enumerate(addresses):
        name = awkward_name(index, addresses)
        expected_name = expected_display_name(name)
        # Names that are safe in a header are also what the bodies and subject greet.
        first_name = expected_name or f"Person {index}"
        person = Recipient(
            address=address,
            display_name=name,
            data={"first_name": first_name, "email": address, "locale": "en"},
            delivery_id=index + 1,
            user_id=index + 1,
        )
        message = build_message(campaign, person, send_time=SEND_TIME)
        assert message.to and len(message.to) == 1
        assert message.cc == [] and message.bcc == []
        assert message.recipients() == message.to
        raw = render_eml(message)

        strict = parsed(raw)
        to_header = strict["To"]
        assert len(to_header.addresses) == 1, (name, to_header)
        (mailbox,) = to_header.addresses
        assert mailbox.addr_spec == address
        # Python's strict parser puts a space between adjacent encoded words of a phrase
        # (RFC 2047 says to drop it); the RFC decoding below checks the name exactly.
        assert mailbox.display_name.replace(" ", "") == expected_name.replace(" ", "")
        assert rfc2047_to(raw) == (f"{expected_name} <{address}>" if expected_name else address)
        kept_names += bool(expected_name)
        assert not to_header.defects, (name, to_header.defects)
        for header in ADDRESS_HEADERS[1:]:
            assert strict[header] is None
        assert [spec for _name, spec in legacy_recipients(raw)] == [address]

        decoded = "\n".join(f"{key}: {value}" for key, value in strict.items())
        decoded += body(strict, "plain") + body(strict, "html")
        found = set(ADDRESS_PATTERN.findall(decoded)) | set(
            ADDRESS_PATTERN.findall(raw.decode("utf-8"))
        )
        assert found & everyone == {address}, (name, found & everyone)
        assert str(strict["Subject"]) == f"Spring news for {first_name}"
    # Both paths were exercised: names kept (encoded or plain) and names dropped.
    assert 400 < kept_names < 1000
    assert time.process_time() - started < 20


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Smith, John", "Smith, John"),
        ('John "Johnny" Smith', 'John "Johnny" Smith'),
        ("Zoë", "Zoë"),
        ("Ada Lovelace", "Ada Lovelace"),
        ("eve@evil.example", ""),
        ("Eve <eve@evil.example>", ""),
        ("Mallory\r\nBcc: eve@evil.example", ""),
        ("Eve\uff20evil.example", ""),
    ],
)
def test_display_name_is_encoded_or_dropped_never_split(
    make_campaign: Callable[..., Campaign], name: str, shown: str
) -> None:
    raw = render_eml(
        build_message(make_campaign(), recipient(display_name=name), send_time=SEND_TIME)
    )
    to_line = re.search(rb"^To: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", raw, re.MULTILINE)
    assert to_line is not None
    if shown == "Ada Lovelace":
        assert to_line.group(1) == b"Ada Lovelace <ada@example.org>"
    elif shown:
        assert to_line.group(1).startswith(b"=?utf-8?b?")
        # No character any parser treats as a separator or quote outside the address.
        assert not set(b',;"()[]\\').intersection(to_line.group(1))
    else:
        assert to_line.group(1) == b"ada@example.org"
    (mailbox,) = parsed(raw)["To"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == (shown, "ada@example.org")


def test_from_name_is_encoded_like_any_display_name(make_campaign: Callable[..., Campaign]) -> None:
    message = parsed(render_eml(build_message(make_campaign(), recipient(), send_time=SEND_TIME)))
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Countersign, the Team",
        "news@countersign.example",
    )
    assert str(message["Reply-To"]) == "help@countersign.example"


def test_internationalized_domain_is_sent_in_punycode(
    make_campaign: Callable[..., Campaign],
) -> None:
    message = build_message(
        make_campaign(), recipient("zoe@exämple.net", display_name="Zoë"), send_time=SEND_TIME
    )
    assert message.expected_recipient == "zoe@exämple.net"
    (mailbox,) = parsed(render_eml(message))["To"].addresses
    assert mailbox.addr_spec == "zoe@xn--exmple-cua.net"


def test_recipient_that_is_not_one_bare_address_is_refused(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    for bad in ("a@example.org, b@example.org", "Eve <eve@example.org>", "a@example.org\r\n"):
        with pytest.raises(BuildError):
            build_message(campaign, recipient(bad), send_time=SEND_TIME)


# --- Pinned headers ---------------------------------------------------------------------------


def test_headers_are_pinned_by_the_builder(make_campaign: Callable[..., Campaign]) -> None:
    campaign = make_campaign()
    message = build_message(campaign, recipient(), send_time=SEND_TIME)
    assert isinstance(message, CampaignMessage)
    assert message.expected_recipient == "ada@example.org"
    assert (message.delivery_id, message.campaign_id) == (41, campaign.pk)
    assert message.metadata == {"delivery_id": "41", "campaign_id": str(campaign.pk)}
    strict = parsed(render_eml(message))
    assert str(strict["Date"]) == "Tue, 04 Mar 2025 09:30:15 +0000"
    assert str(strict["Subject"]) == "Spring news for Ada"
    message_id = str(strict["Message-ID"])
    assert re.fullmatch(
        rf"<c{campaign.pk}\.d41\.[0-9a-f]{{12}}@mail\.countersign\.example>", message_id
    )
    assert message_id == message.extra_headers["Message-ID"]
    assert strict.get_all("To") and len(strict.get_all("To") or []) == 1


def test_subject_is_plain_on_the_message_and_exactly_decodable_on_the_wire(
    make_campaign: Callable[..., Campaign],
) -> None:
    plain = render_eml(build_message(make_campaign(), recipient(), send_time=SEND_TIME))
    assert b"\r\nSubject: Spring news for Ada\r\n" in plain
    campaign = make_campaign(subject_template="Zoë's =?utf-8?b?SGk=?= news, {{ first_name }}")
    message = build_message(campaign, recipient(), send_time=SEND_TIME)
    assert message.subject == "Zoë's =?utf-8?b?SGk=?= news, Ada"
    raw = render_eml(message)
    assert re.search(rb"^Subject: =\?utf-8\?b\?[A-Za-z0-9+/=]+\?=\r\n", raw, re.MULTILINE)
    assert str(parsed(raw)["Subject"]) == message.subject


def test_date_is_written_in_utc_from_an_aware_send_time(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    local = SEND_TIME.astimezone(ZoneInfo("America/New_York"))
    strict = parsed(render_eml(build_message(campaign, recipient(), send_time=local)))
    assert str(strict["Date"]) == "Tue, 04 Mar 2025 09:30:15 +0000"
    with pytest.raises(BuildError):
        build_message(campaign, recipient(), send_time=SEND_TIME.replace(tzinfo=None))


def test_test_send_message_id_marks_it_as_a_test(
    make_campaign: Callable[..., Campaign], olivia: User
) -> None:
    campaign = make_campaign()
    olivia.seed_addresses = "seed-one@example.com\nseed-two@example.com"
    olivia.save()
    person = recipient_for_test(campaign, olivia, "seed-two@example.com")
    assert person.delivery_id is None and person.user_id == olivia.pk
    message = build_message(campaign, person, send_time=SEND_TIME)
    assert re.fullmatch(
        rf"<c{campaign.pk}\.dtest-[0-9a-f]{{10}}\.[0-9a-f]{{12}}@mail\.countersign\.example>",
        message.extra_headers["Message-ID"],
    )
    assert message.metadata == {"campaign_id": str(campaign.pk)}
    (mailbox,) = parsed(render_eml(message))["To"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == ("Olivia", "seed-two@example.com")
    with pytest.raises(BuildError):
        recipient_for_test(campaign, olivia, "olivia@example.com")


# --- Determinism ------------------------------------------------------------------------------


def test_same_input_gives_identical_bytes_also_after_reloading_the_campaign(
    make_campaign: Callable[..., Campaign], monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = make_campaign(scheduled_at=SEND_TIME - timedelta(hours=1))
    first = render_eml(build_message(campaign, recipient(), send_time=SEND_TIME))
    # Nothing in the bytes comes from the clock (the unsubscribe token included).
    later = time.time() + 86_400
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: later)
        assert render_eml(build_message(campaign, recipient(), send_time=SEND_TIME)) == first
    message = build_message(campaign, recipient(), send_time=SEND_TIME)
    assert render_eml(message) == first
    # Serializing one message object twice (guard, then transport) gives the same bytes.
    assert render_eml(message) == render_eml(message)
    reloaded = Campaign.objects.get(pk=campaign.pk)
    assert render_eml(build_message(reloaded, recipient(), send_time=SEND_TIME)) == first
    boundary = re.search(rb'boundary="([^"]+)"', first)
    assert boundary is not None and boundary.group(1).startswith(b"=_cs")


def test_a_different_send_time_changes_only_the_date_header(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    early = render_eml(build_message(campaign, recipient(), send_time=SEND_TIME))
    late = render_eml(
        build_message(campaign, recipient(), send_time=SEND_TIME + timedelta(days=3, minutes=7))
    )
    assert early != late
    early_lines, late_lines = early.split(b"\r\n"), late.split(b"\r\n")
    assert len(early_lines) == len(late_lines)
    changed = [(a, b) for a, b in zip(early_lines, late_lines, strict=True) if a != b]
    assert changed == [
        (b"Date: Tue, 04 Mar 2025 09:30:15 +0000", b"Date: Fri, 07 Mar 2025 09:37:15 +0000")
    ]


def test_different_recipients_get_different_message_ids_and_boundaries(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    one = build_message(campaign, recipient(), send_time=SEND_TIME)
    two = build_message(campaign, recipient("bob@example.org", delivery_id=42), send_time=SEND_TIME)
    assert one.extra_headers["Message-ID"] != two.extra_headers["Message-ID"]
    boundary = re.compile(rb'boundary="([^"]+)"')
    one_match = boundary.search(render_eml(one))
    two_match = boundary.search(render_eml(two))
    assert one_match and two_match and one_match.group(1) != two_match.group(1)


# --- Unsubscribe --------------------------------------------------------------------------


def test_announcement_carries_one_click_unsubscribe_that_verifies(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    message = build_message(campaign, recipient(), send_time=SEND_TIME)
    strict = parsed(render_eml(message))
    assert str(strict["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    header = " ".join(str(strict["List-Unsubscribe"]).split())
    match = re.fullmatch(rf"<({re.escape(BASE_URL)}/u/([^/>]+)/)>", header)
    assert match is not None, header
    url, token = match.groups()
    assert read_unsubscribe_token(token) == read_unsubscribe_token(token)
    request = read_unsubscribe_token(token)
    assert (request.address, request.campaign_id) == ("ada@example.org", campaign.pk)
    assert url == unsubscribe_url(token)
    # The placeholder and the header carry the same signed URL.
    assert f"Unsubscribe: {url}" in body(strict, "plain")
    assert f'href="{url}"' in body(strict, "html")


def test_mailto_unsubscribe_is_added_only_when_configured(
    make_campaign: Callable[..., Campaign], settings: Any
) -> None:
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@countersign.example"
    strict = parsed(render_eml(build_message(make_campaign(), recipient(), send_time=SEND_TIME)))
    header = " ".join(str(strict["List-Unsubscribe"]).split())
    match = re.fullmatch(
        rf"<{re.escape(BASE_URL)}/u/([^/>]+)/>, "
        r"<mailto:unsubscribe@countersign\.example\?subject=unsubscribe%20([^>]+)>",
        header,
    )
    assert match is not None, header
    assert match.group(1) == match.group(2)


def test_service_notice_carries_no_unsubscribe_headers(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(
        category=Campaign.Category.SERVICE_NOTICE,
        text_template="Your password was changed, {{ first_name }}.",
        html_template="",
    )
    message = build_message(campaign, recipient(), send_time=SEND_TIME)
    strict = parsed(render_eml(message))
    assert strict["List-Unsubscribe"] is None
    assert strict["List-Unsubscribe-Post"] is None
    assert "/u/" not in body(strict, "plain")
    assert body(strict, "plain") == "Your password was changed, Ada.\n"


def test_service_notice_may_not_use_the_unsubscribe_placeholder(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(category=Campaign.Category.SERVICE_NOTICE)
    with pytest.raises(TemplateSyntaxError, match='unknown placeholder "unsubscribe_url"'):
        build_message(campaign, recipient(), send_time=SEND_TIME)


def test_announcement_footer_adds_postal_address_and_link_only_where_missing(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(
        text_template="Hello {{ first_name }}.\nLeave: {{ unsubscribe_url }}\n",
        html_template="<p>Hello {{ first_name }}.</p>",
    )
    strict = parsed(render_eml(build_message(campaign, recipient(), send_time=SEND_TIME)))
    text, html = body(strict, "plain"), body(strict, "html")
    url = re.search(r"https://countersign\.example/u/[^/\s]+/", text)
    assert url is not None
    assert text.count(url.group()) == 1
    assert text.endswith("-- \nCountersign Ltd\n1 Example Street\nSpringfield 12345\n")
    assert html.count(url.group()) == 1
    assert "Countersign Ltd<br>1 Example Street<br>Springfield 12345" in html
    assert f'<a href="{url.group()}" rel="noopener noreferrer">Unsubscribe</a>' in html


def test_text_part_is_derived_from_html_when_the_text_template_is_empty(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(text_template="")
    strict = parsed(render_eml(build_message(campaign, recipient(), send_time=SEND_TIME)))
    text = body(strict, "plain")
    assert text.startswith(
        "Hello Ada,\n\nOur spring update.\n\nRead more (https://countersign.example/news)\n"
    )
    assert "Countersign Ltd\n1 Example Street" in text
    assert "Unsubscribe: https://countersign.example/u/" in text


# --- Content ------------------------------------------------------------------------------


def test_missing_value_without_default_fails_the_delivery(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(text_template="Hi {{ last_name }}")
    with pytest.raises(MissingPlaceholder) as info:
        build_message(campaign, recipient(data={"first_name": "Ada"}), send_time=SEND_TIME)
    assert info.value.name == "last_name"


def test_missing_value_with_default_renders_the_default(
    make_campaign: Callable[..., Campaign],
) -> None:
    strict = parsed(
        render_eml(build_message(make_campaign(), recipient(data={}), send_time=SEND_TIME))
    )
    assert str(strict["Subject"]) == "Spring news for you"
    assert body(strict, "plain").startswith("Hello there,\n")


def test_recipient_value_cannot_inject_a_header_through_the_subject(
    make_campaign: Callable[..., Campaign],
) -> None:
    person = recipient(data={"first_name": "Bob\r\nBcc: eve@evil.example"})
    with pytest.raises(UnsafeHeaderValue):
        build_message(make_campaign(), person, send_time=SEND_TIME)


@pytest.mark.parametrize(
    "field_name",
    ["subject_template", "text_template", "html_template"],
)
@pytest.mark.parametrize(
    "source",
    ["{% load static %}", '{% include "x.html" %}', "{% debug %}", "{{ user.password }}"],
)
def test_forbidden_template_saved_anyway_is_refused_at_build(
    make_campaign: Callable[..., Campaign], field_name: str, source: str
) -> None:
    campaign = make_campaign(**{field_name: source})
    with pytest.raises(TemplateSyntaxError):
        build_message(campaign, recipient(), send_time=SEND_TIME)


def test_subject_template_with_a_line_break_is_refused_at_build(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(subject_template="Hi\r\nBcc: x@evil.example")
    with pytest.raises(TemplateSyntaxError) as info:
        build_message(campaign, recipient(), send_time=SEND_TIME)
    assert info.value.position == 2


def test_html_body_is_rendered_escaped_then_sanitized(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(
        html_template=(
            '<p onmouseover="x()">Hi {{ first_name }}</p><script>alert(1)</script>'
            '<a href="{{ website|default:"https://ok.example" }}">site</a>'
            "{{ unsubscribe_url }}"
        ),
    )
    AudienceAttribute.objects.create(name="website")
    person = recipient(
        data={"first_name": "<img src=x onerror=alert(2)>", "website": "javascript:alert(3)"}
    )
    html = body(parsed(render_eml(build_message(campaign, person, send_time=SEND_TIME))), "html")
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    for gone in ("<script", "alert(1)", "onmouseover", "javascript:", "<img"):
        assert gone not in html
    assert html.startswith('<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>')


def test_campaign_without_any_body_is_refused(make_campaign: Callable[..., Campaign]) -> None:
    campaign = make_campaign(text_template="  ", html_template="")
    with pytest.raises(BuildError, match="neither a text nor an HTML body"):
        build_message(campaign, recipient(), send_time=SEND_TIME)


# --- Recipient data -----------------------------------------------------------------------


def test_recipient_data_is_account_fields_over_string_attributes(
    make_member: Callable[..., User],
) -> None:
    member = make_member(
        "grace@example.org",
        first_name="Grace",
        last_name="Hopper",
        locale="en-US",
        attributes={"plan": "Pro", "email": "spoof@evil.example", "seats": 5},
    )
    assert recipient_data_for_user(member) == {
        "first_name": "Grace",
        "last_name": "Hopper",
        "email": "grace@example.org",
        "locale": "en-US",
        "plan": "Pro",
    }


def test_recipient_for_delivery_uses_the_frozen_data(
    make_campaign: Callable[..., Campaign], make_member: Callable[..., User]
) -> None:
    member = make_member("grace@example.org", first_name="Grace", last_name="Hopper")
    campaign = make_campaign()
    delivery = Delivery.objects.create(
        campaign=campaign,
        user=member,
        address=member.email,
        recipient_data=recipient_data_for_user(member),
    )
    member.first_name = "Changed"
    member.save()
    person = recipient_for_delivery(delivery)
    assert person == Recipient(
        address="grace@example.org",
        display_name="Grace Hopper",
        data=delivery.recipient_data,
        delivery_id=delivery.pk,
        user_id=member.pk,
    )
    message = build_message(campaign, person, send_time=SEND_TIME)
    assert f".d{delivery.pk}." in message.extra_headers["Message-ID"]
    assert str(parsed(render_eml(message))["To"]) == "Grace Hopper <grace@example.org>"


# --- Digests ------------------------------------------------------------------------------


def test_content_digest_is_64_lowercase_hex_and_stable_across_loads(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign(scheduled_at=SEND_TIME)
    digest = content_digest(campaign)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert content_digest(Campaign.objects.get(pk=campaign.pk)) == digest


@pytest.mark.parametrize(
    ("target", "field_name", "value"),
    [
        ("campaign", "subject_template", "Other subject"),
        ("campaign", "text_template", "Other text {{ unsubscribe_url }}"),
        ("campaign", "html_template", "<p>Other</p>"),
        ("campaign", "category", Campaign.Category.SERVICE_NOTICE),
        ("campaign", "scheduled_at", SEND_TIME + timedelta(seconds=1)),
        ("campaign", "audience_hash", "b" * 64),
        ("sender", "from_name", "Someone else"),
        ("sender", "from_address", "other@countersign.example"),
        ("sender", "reply_to", "other@countersign.example"),
        ("sender", "postal_address", "Elsewhere 1"),
        ("sender", "message_id_domain", "other.countersign.example"),
    ],
)
def test_content_digest_changes_with_anything_that_shapes_the_messages(
    make_campaign: Callable[..., Campaign], target: str, field_name: str, value: Any
) -> None:
    campaign = make_campaign(scheduled_at=SEND_TIME, audience_hash="a" * 64)
    before = content_digest(campaign)
    setattr(campaign if target == "campaign" else campaign.sender, field_name, value)
    assert content_digest(campaign) != before


def test_content_digest_ignores_what_does_not_shape_messages(
    make_campaign: Callable[..., Campaign],
) -> None:
    campaign = make_campaign()
    before = content_digest(campaign)
    campaign.name = "Renamed internally"
    campaign.status = Campaign.Status.IN_REVIEW
    assert content_digest(campaign) == before


def test_message_id_follows_the_content_digest(make_campaign: Callable[..., Campaign]) -> None:
    campaign = make_campaign()
    before = build_message(campaign, recipient(), send_time=SEND_TIME).extra_headers["Message-ID"]
    campaign.text_template = "Changed {{ unsubscribe_url }}"
    after = build_message(campaign, recipient(), send_time=SEND_TIME).extra_headers["Message-ID"]
    assert before != after
    assert before.split(".")[:2] == after.split(".")[:2]


def test_audience_hash_covers_ids_addresses_and_data_case_insensitively() -> None:
    rows = [(1, "Ada@Example.org", {"first_name": "Ada"}), (2, "bob@example.org", {})]
    base = audience_hash(rows)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert audience_hash([(1, "ada@example.org", {"first_name": "Ada"}), rows[1]]) == base
    assert audience_hash(rows[:1]) != base
    assert audience_hash([(1, "ada@example.org", {"first_name": "Ad"}), rows[1]]) != base
    assert audience_hash([(3, "ada@example.org", {"first_name": "Ada"}), (4, *rows[1][1:])]) != base
    assert audience_hash([rows[0], (2, "bob@example.org", {"locale": "en"})]) != base


def test_audience_hash_reads_data_given_as_canonical_text_the_same_way() -> None:
    """PostgreSQL hands the data over as canonical JSON text (AUDIENCE_DATA_SQL); the
    address is quoted without json.dumps when that would write it unchanged."""
    data = {"first_name": "Zoë", "plan": 'say "hi"\\'}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for address in [
        "Ada@Example.org",
        "zoë@example.org",
        'odd"quote@example.org',
        "back\\slash@example.org",
        "ctl\x01char@example.org",
        "sep\u2028line@example.org",
        "DEL\x7f@example.org",
    ]:
        assert audience_hash([(7, address, text)]) == audience_hash([(7, address, data)]), address


def test_audience_hash_refuses_rows_out_of_user_order() -> None:
    with pytest.raises(ValueError, match="ordered by user id"):
        audience_hash([(2, "b@example.org", {}), (1, "a@example.org", {})])
    with pytest.raises(ValueError, match="one per user"):
        audience_hash([(1, "b@example.org", {}), (1, "a@example.org", {})])


def test_audience_hash_streams_a_hundred_thousand_rows_quickly() -> None:
    def rows() -> Any:
        for user_id in range(1, 100_001):
            yield (
                user_id,
                f"member{user_id}@example.org",
                {"first_name": f"M{user_id}", "email": "x"},
            )

    started = time.process_time()  # this process's CPU: load elsewhere does not count
    digest = audience_hash(rows())
    assert time.process_time() - started < 5
    assert digest == audience_hash(rows())


# --- Tokens -------------------------------------------------------------------------------


def test_unsubscribe_token_round_trips() -> None:
    token = make_unsubscribe_token(address="ada@example.org", campaign_id=12)
    request = read_unsubscribe_token(token)
    assert (request.address, request.campaign_id) == ("ada@example.org", 12)
    general = read_unsubscribe_token(
        make_unsubscribe_token(address="b@example.org", campaign_id=None)
    )
    assert general.campaign_id is None


def test_altered_token_is_refused() -> None:
    token = make_unsubscribe_token(address="ada@example.org", campaign_id=12)
    forged = signing.dumps({"a": "eve@example.org", "c": 12}, salt=UNSUBSCRIBE_SALT)
    payload, rest = forged.split(":", 1)
    original_rest = token.split(":", 1)[1]
    for bad in (
        payload + ":" + original_rest,  # someone else's address under this signature
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token + "x",
        "garbage",
        "",
    ):
        with pytest.raises(InvalidToken):
            read_unsubscribe_token(bad)


def test_token_signed_with_another_salt_is_refused() -> None:
    other = signing.dumps({"a": "ada@example.org", "c": 12}, salt="django.core.signing")
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(other)


def test_token_expires_after_180_days(monkeypatch: pytest.MonkeyPatch) -> None:
    token = make_unsubscribe_token(address="ada@example.org", campaign_id=12)
    now = time.time()
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: now + timedelta(days=179).total_seconds())
        assert read_unsubscribe_token(token).address == "ada@example.org"
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: now + timedelta(days=181).total_seconds())
        with pytest.raises(InvalidToken, match="expired"):
            read_unsubscribe_token(token)


def test_token_with_pinned_issue_time_expires_from_that_time() -> None:
    old = datetime.now(UTC) - timedelta(days=181)
    recent = datetime.now(UTC) - timedelta(days=179)
    with pytest.raises(InvalidToken, match="expired"):
        read_unsubscribe_token(
            make_unsubscribe_token(address="ada@example.org", campaign_id=1, issued_at=old)
        )
    token = make_unsubscribe_token(address="ada@example.org", campaign_id=1, issued_at=recent)
    assert read_unsubscribe_token(token).campaign_id == 1
    assert token == make_unsubscribe_token(
        address="ada@example.org", campaign_id=1, issued_at=recent
    )


def test_signed_payload_that_is_not_an_unsubscribe_request_is_refused() -> None:
    for payload in (
        ["ada@example.org"],
        {"a": "a@x.example, b@y.example", "c": 1},
        {"a": "ada@example.org", "c": "1"},
    ):
        with pytest.raises(InvalidToken):
            read_unsubscribe_token(signing.dumps(payload, salt=UNSUBSCRIBE_SALT))


def test_unsubscribe_url_is_absolute_under_the_public_base_url() -> None:
    assert unsubscribe_url("abc:def") == f"{BASE_URL}/u/abc:def/"


def test_unsubscribe_url_is_what_reverse_gives_under_any_prefix_and_for_any_token() -> None:
    from django.urls import reverse, set_script_prefix

    token = make_unsubscribe_token(address="ada@example.org", campaign_id=3, issued_at=SEND_TIME)
    for prefix in ("/", "/countersign/", "/TOKEN/", "/"):
        set_script_prefix(prefix)
        try:
            for value in (token, "a b?c&d", "zoë"):
                expected = BASE_URL + reverse("campaigns:unsubscribe", kwargs={"token": value})
                assert unsubscribe_url(value) == expected
            assert unsubscribe_url(token).startswith(f"{BASE_URL}{prefix}u/")
        finally:
            set_script_prefix("/")
