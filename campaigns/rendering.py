"""The one message builder: (campaign, recipient) -> the exact message handed to the backend.

The review preview, the test send and the worker all call `build_message`, so what the
reviewer approves is byte for byte what leaves (for the same send time). The builder
pins every header itself rather than leaving it to serialization:

- To is exactly the one recipient. Display names are emitted as RFC 2047 encoded words
  unless they are plain letters, digits and spaces, so no parser (old or strict) can read
  a comma, quote or bracket in a name as a second address; a name containing "@", "<",
  ">" or a control character is dropped and the bare address used instead.
- Subject is rendered, refused if it holds a control character, and serialized as
  encoded words that decode to exactly the rendered text.
- Message-ID, MIME boundaries and the unsubscribe token are derived from the content,
  never random or taken from the clock: two builds give identical bytes.
- Only To is set: never cc, bcc, nor any of anymail's batch-sending attributes (setting
  any of those, even empty, makes anymail send one API call for many recipients).

Announcements get List-Unsubscribe (signed https URL, plus mailto when
UNSUBSCRIBE_MAILTO is set) and List-Unsubscribe-Post. Both bodies must show the sender's
postal address and the unsubscribe link: the builder appends a standard footer with
whichever is missing rather than refusing, because staff cannot type the per-recipient
URL and a missing legal footer should not be discoverable only when sending starts.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.utils import timezone
from django.utils.encoding import punycode

from accounts.models import AudienceAttribute, User
from accounts.validators import HEADER_CONTROL, person_text_error, single_address_error

from .audience import recipient_data_for_user
from .digests import content_digest
from .guard.addresses import message_bytes
from .models import Campaign, Delivery
from .templating import (
    CompiledTemplate,
    RenderError,
    TemplateSyntaxError,
    allowed_placeholders,
    check_header_value,
    compile_body,
    compile_subject,
    html_to_text,
    sanitize_html,
    validate_html_body,
)
from .tokens import make_unsubscribe_token, test_unsubscribe_url, unsubscribe_url
from .wire import direct_bytes, pinned_boundary


class BuildError(ValueError):
    """The message cannot be built (bad address, missing body, misconfigured sender)."""


# Everything `build_message` raises for a campaign or recipient it cannot turn into a
# message; the worker fails that delivery, the preview shows the text.
MESSAGE_ERRORS: tuple[type[Exception], ...] = (TemplateSyntaxError, RenderError, BuildError)

# Names that are safe as a bare RFC 5322 phrase: atoms of letters and digits (plus the
# apostrophe and hyphen of O'Brien and Smith-Jones), single spaces. Everything else is
# encoded, which leaves no specials at all in the raw header.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9'-]+(?: [A-Za-z0-9'-]+)*")
_PLAIN_NAME_MAX = 60
# 45 bytes -> 60 base64 characters; with "=?utf-8?b?" and "?=" an encoded word stays
# within RFC 2047's 75-character limit.
_ENCODED_WORD_BYTES = 45
# "Subject: " takes 9 of the 78 characters of the first line: 36 bytes -> 60 characters.
_SUBJECT_WORD_BYTES = 36
_ADDRESS_CHARACTERS = frozenset("@<>")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_URL_FORBIDDEN = re.compile(r"[\s<>,\"]")

ONE_CLICK = "List-Unsubscribe=One-Click"
# A rendered body larger than this fails its delivery (templates are limited at save;
# recipient values could still inflate one). It also bounds the guard's content scan.
MAX_RENDERED_BODY_LENGTH = 1_000_000


@dataclass(frozen=True)
class Recipient:
    """One addressee: the bare address and the flat values their templates see."""

    address: str
    display_name: str
    data: Mapping[str, str] = field(hash=False)
    delivery_id: int | None
    user_id: int | None


class CampaignMessage(EmailMultiAlternatives):
    """A campaign message as built by `build_message`, with what the guard checks it against."""

    def __init__(
        self,
        *,
        expected_recipient: str,
        delivery_id: int | None,
        campaign_id: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.expected_recipient = expected_recipient
        self.delivery_id = delivery_id
        self.campaign_id = campaign_id
        # anymail's per-message metadata, echoed back in tracking events; other
        # backends ignore the attribute.
        self.metadata: dict[str, str] = {}

    def message(self) -> Any:
        msg = super().message()
        # The email package picks random boundaries at serialization time; derive them
        # from the Message-ID instead so the previewed .eml and the sent bytes match.
        seed = self._boundary_seed()
        contents = [str(self.body)] + [str(alternative[0]) for alternative in self.alternatives]
        for index, part in enumerate(msg.walk()):
            if part.is_multipart():
                part.set_boundary(pinned_boundary(seed, index, contents))
        # `subject` stays the plain rendered text (what HTTP providers expect); only
        # the serialized header gets our encoding. replace_header keeps its position.
        encoded = encode_subject(str(self.subject))
        if encoded != self.subject:
            msg.replace_header("Subject", encoded)
        return msg

    def wire_bytes(self) -> bytes:
        """The message as it leaves: `message().as_bytes(linesep="\\r\\n")`, written
        directly (`wire.direct_bytes`) when it has the builder's shape."""
        direct = direct_bytes(
            self,
            subject=encode_subject(str(self.subject)),
            boundary_seed=self._boundary_seed(),
        )
        if direct is not None:
            return direct
        raw: bytes = self.message().as_bytes(linesep="\r\n")
        return raw

    def _boundary_seed(self) -> str:
        seed = str(self.extra_headers.get("Message-ID", ""))
        if not seed:
            raise BuildError("a campaign message needs its Message-ID before serialization")
        return seed


# --- Recipients ----------------------------------------------------------------------


def _display_name(data: Mapping[str, str]) -> str:
    parts = (str(data.get("first_name") or "").strip(), str(data.get("last_name") or "").strip())
    return " ".join(part for part in parts if part)


def recipient_for_delivery(delivery: Delivery) -> Recipient:
    raw = delivery.recipient_data if isinstance(delivery.recipient_data, dict) else {}
    data = {str(key): value for key, value in raw.items() if isinstance(value, str)}
    return Recipient(
        address=delivery.address,
        display_name=_display_name(data),
        data=data,
        delivery_id=delivery.pk,
        user_id=delivery.user_id,
    )


def recipient_for_member(user: User) -> Recipient:
    """An audience member before their delivery exists (the compose preview): the values
    submission would freeze for them, and no delivery id."""
    data = recipient_data_for_user(user)
    return Recipient(
        address=user.email,
        display_name=_display_name(data),
        data=data,
        delivery_id=None,
        user_id=user.pk,
    )


def recipient_for_test(campaign: Campaign, user: User, address: str) -> Recipient:
    """A test send of `campaign`: the staff member's own data, to one of their seed addresses."""
    if address.strip().lower() not in {seed.lower() for seed in user.seed_address_list()}:
        raise BuildError(f"{address!r} is not one of {user}'s seed addresses.")
    problem = single_address_error(address)
    if problem is not None:
        raise BuildError(f"Seed address {address!r} {problem}.")
    data = recipient_data_for_user(user)
    return Recipient(
        address=address,
        display_name=_display_name(data),
        data=data,
        delivery_id=None,
        user_id=user.pk,
    )


# --- Addresses -----------------------------------------------------------------------


def wire_address(address: str) -> str:
    """The addr-spec as it appears on the wire: an internationalized domain in punycode.

    Django's own serializer does the same, so To carries this form; compare with it.
    """
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise BuildError(f"{address!r} has a non-ASCII local part.")
    return f"{local}@{domain if domain.isascii() else punycode(domain)}"


def safe_display_name(name: str) -> str:
    """The display name to put beside an address, or "" when it must be dropped.

    Dropped: names with a control, bidi override or invisible character, and names that
    look like an address
    ("@", "<", ">", also in their full-width look-alikes), which must never put a second
    address, real or apparent, into an address header.
    """
    if person_text_error(name) is not None:
        return ""  # a control, bidi override or invisible character: show the bare address
    name = name.strip()
    normalized = unicodedata.normalize("NFKC", name)
    if _ADDRESS_CHARACTERS.intersection(name) or _ADDRESS_CHARACTERS.intersection(normalized):
        return ""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from broken input
        return ""
    return name


def encoded_words(text: str, *, max_bytes: int = _ENCODED_WORD_BYTES) -> str:
    """`text` as RFC 2047 base64 encoded words separated by spaces (where headers fold).

    Base64 leaves no quote, comma, bracket or whitespace in the raw header, and the
    decoded text is exactly `text`, spaces included.
    """
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        length = len(char.encode("utf-8"))
        # Split only between characters: each encoded word must decode on its own.
        if chunk and size + length > max_bytes:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += length
    if chunk:
        words.append("".join(chunk))
    return " ".join(
        "=?utf-8?b?" + base64.b64encode(word.encode("utf-8")).decode("ascii") + "?="
        for word in words
    )


def encode_phrase(name: str) -> str:
    """A display name as RFC 5322 phrase text: plain words as is, anything else encoded."""
    if len(name) <= _PLAIN_NAME_MAX and _PLAIN_NAME.fullmatch(name):
        return name
    return encoded_words(name)


def encode_subject(subject: str) -> str:
    """Plain ASCII as is; anything else (or text that looks encoded) as encoded words.

    Django would encode non-ASCII subjects itself, but starts them on a folded second
    line that strict parsers decode with a leading space. Words of 36 bytes keep the
    first one on the `Subject:` line, so the decoded subject is exactly the rendered one.
    ASCII text containing "=?" is encoded too, so a client cannot decode a literal
    "=?utf-8?...?=" typed by staff or a recipient into something else.
    """
    if subject.isascii() and "=?" not in subject:
        return subject
    return encoded_words(subject, max_bytes=_SUBJECT_WORD_BYTES)


def format_address(name: str, address: str) -> str:
    """An ASCII-only mailbox for an address header (Django leaves ASCII values untouched)."""
    spec = wire_address(address)
    display = safe_display_name(name)
    return f"{encode_phrase(display)} <{spec}>" if display else spec


# --- Message-IDs ------------------------------------------------------------------


def make_message_id(
    *, campaign_id: int, delivery_id: int | None, address: str, digest: str, domain: str
) -> str:
    """Deterministic per (campaign, delivery, content): a resend of the same delivery reuses it."""
    address_key = address.lower()
    if delivery_id is not None:
        delivery_part = f"d{delivery_id}"
    else:
        delivery_part = "dtest-" + hashlib.sha256(address_key.encode()).hexdigest()[:10]
    tail = hashlib.sha256((digest + address_key).encode()).hexdigest()[:12]
    return f"<c{campaign_id}.{delivery_part}.{tail}@{domain}>"


# --- Templates ---------------------------------------------------------------------------


def campaign_placeholders(category: str | None) -> frozenset[str]:
    """What a campaign of `category` may use: the fixed names plus imported attributes."""
    return allowed_placeholders(
        category=category,
        attributes=AudienceAttribute.objects.values_list("name", flat=True),
    )


@dataclass(frozen=True)
class CampaignTemplates:
    subject: CompiledTemplate
    text: CompiledTemplate | None
    html: CompiledTemplate | None


def compiled_templates(campaign: Campaign) -> CampaignTemplates:
    """The campaign's templates, compiled against its allowed placeholders.

    Kept on the instance for as long as the sources and category stay the same, so a
    batch that builds hundreds of messages for one campaign compiles (and looks up the
    attribute names) once, while an edit of the instance is never served stale.
    """
    key = (
        campaign.category,
        campaign.subject_template,
        campaign.text_template,
        campaign.html_template,
    )
    cached = campaign.__dict__.get("_compiled_templates")
    if cached is not None and cached[0] == key:
        templates: CampaignTemplates = cached[1]
        return templates
    allowed = campaign_placeholders(campaign.category)
    templates = CampaignTemplates(
        subject=compile_subject(campaign.subject_template, allowed=allowed),
        text=(
            compile_body(campaign.text_template, allowed=allowed)
            if campaign.text_template.strip()
            else None
        ),
        html=(
            compile_body(campaign.html_template, allowed=allowed)
            if campaign.html_template.strip()
            else None
        ),
    )
    campaign.__dict__["_compiled_templates"] = (key, templates)
    return templates


def template_errors(campaign: Campaign) -> dict[str, str]:
    """Per-field template errors, each naming its line and column."""
    allowed = campaign_placeholders(campaign.category or None)
    errors: dict[str, str] = {}
    try:
        compile_subject(campaign.subject_template, allowed=allowed)
    except TemplateSyntaxError as exc:
        errors["subject_template"] = str(exc)
    for name in ("text_template", "html_template"):
        source = getattr(campaign, name)
        if not source:
            continue
        try:
            if name == "html_template":
                validate_html_body(source)
            compile_body(source, allowed=allowed)
        except TemplateSyntaxError as exc:
            errors[name] = str(exc)
    if not campaign.text_template.strip() and not campaign.html_template.strip():
        errors["text_template"] = "A text part is required (or an HTML part to derive it from)."
    return errors


def preview_time(campaign: Campaign) -> datetime:
    """The send time used by previews: pinned, so the same page shows the same bytes."""
    return campaign.submitted_at or campaign.edited_at or campaign.created_at


# --- The builder -----------------------------------------------------------------------


@lru_cache(maxsize=16)
def date_header(send_time: datetime) -> str:
    """The Date header for `send_time` (a chunk's messages share one send time)."""
    return format_datetime(send_time.astimezone(UTC))


def _unsubscribe_issued_at(campaign: Campaign) -> datetime:
    # The token's signing time must not come from the clock (the bytes would change on
    # every build). The scheduled time, else the submission, else the last edit: the
    # 180-day validity then counts from about when the messages leave.
    for moment in (
        campaign.scheduled_at,
        campaign.submitted_at,
        campaign.edited_at,
        campaign.created_at,
    ):
        if moment is not None:
            return moment
    raise BuildError("the campaign has not been saved")


def _list_unsubscribe(url: str, token: str) -> str:
    if _URL_FORBIDDEN.search(url) or HEADER_CONTROL.search(url):
        raise BuildError(f"PUBLIC_BASE_URL gives an unusable unsubscribe URL: {url!r}")
    value = f"<{url}>"
    mailto = settings.UNSUBSCRIBE_MAILTO
    if mailto:
        problem = single_address_error(mailto)
        if problem is not None:
            raise BuildError(f"UNSUBSCRIBE_MAILTO {mailto!r} {problem}.")
        subject = quote(f"unsubscribe {token}", safe=":")
        value += f", <mailto:{wire_address(mailto)}?subject={subject}>"
    return value


def _normalize_newlines(text: str) -> str:
    # Form fields submit CRLF; the serializer writes its own line endings.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _announcement_footer(
    text: str, html: str | None, *, postal_address: str, url: str
) -> tuple[str, str | None]:
    """Append the postal address and unsubscribe link to each body that lacks them."""
    postal_lines = [line.strip() for line in postal_address.splitlines() if line.strip()]
    if not postal_lines:
        raise BuildError("the sender identity has no postal address (required in announcements)")
    postal = _flat(" ".join(postal_lines))

    text_extra: list[str] = []
    if postal not in _flat(text):
        text_extra.extend(postal_lines)
    if url not in text:
        text_extra.append(f"Unsubscribe: {url}")
    if text_extra:
        text = text.rstrip("\n") + "\n\n-- \n" + "\n".join(text_extra) + "\n"

    if html is not None:
        html_extra: list[str] = []
        if postal not in _flat(html_to_text(html)):
            html_extra.append("<br>".join(html_lib.escape(line) for line in postal_lines))
        if html_lib.escape(url) not in html:
            html_extra.append(f'<a href="{html_lib.escape(url)}">Unsubscribe</a>')
        if html_extra:
            html = sanitize_html(
                html
                + '<hr><p style="color:#666666;font-size:12px">'
                + "<br>".join(html_extra)
                + "</p>"
            )
            # The footer is ours, but it passed the sanitizer too: prove it survived.
            # (With nothing appended, the checks above already read this very HTML.)
            if html_lib.escape(url) not in html or postal not in _flat(html_to_text(html)):
                raise BuildError("the HTML body lost its unsubscribe link or postal address")
    return text, html


def _html_document(fragment: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f"{fragment}\n</body></html>\n"
    )


def build_message(
    campaign: Campaign, recipient: Recipient, *, send_time: datetime, test: bool = False
) -> CampaignMessage:
    """Build the one message for one recipient of `campaign`, as it will be sent.

    `test`: a test send. The unsubscribe link (body and List-Unsubscribe) then leads to
    a page that unsubscribes nobody, instead of carrying a signed token: a staff member
    clicking it in their inbox, or their mail client's one-click POST, must not act.
    Everything else is the real message.

    Raises one of MESSAGE_ERRORS when it cannot: an unknown or forbidden placeholder,
    a recipient without a required value, a control character in a rendered header,
    an address that is not exactly one bare address.
    """
    if send_time.tzinfo is None or send_time.utcoffset() is None:
        raise BuildError("send_time must be timezone-aware")
    if campaign.pk is None:
        raise BuildError("the campaign has not been saved")
    problem = single_address_error(recipient.address)
    if problem is not None:
        raise BuildError(f"Recipient address {recipient.address!r} {problem}.")

    sender = campaign.sender
    domain = sender.message_id_domain.strip()
    domain = domain if domain.isascii() else punycode(domain)
    if not _DOMAIN.fullmatch(domain):
        raise BuildError(f"The sender's Message-ID domain {domain!r} is not a domain name.")
    digest = content_digest(campaign)

    templates = compiled_templates(campaign)
    subject_template, text_template, html_template = (
        templates.subject,
        templates.text,
        templates.html,
    )
    if text_template is None and html_template is None:
        raise BuildError("the campaign has neither a text nor an HTML body")

    values = {key: value for key, value in recipient.data.items() if key != "unsubscribe_url"}
    url = ""
    list_unsubscribe = ""
    if campaign.is_announcement:
        if test:
            # No signed token anywhere in a test message: the mailto subject gets a word.
            token, url = "test-message", test_unsubscribe_url()
        else:
            token = make_unsubscribe_token(
                address=recipient.address,
                campaign_id=campaign.pk,
                issued_at=_unsubscribe_issued_at(campaign),
            )
            url = unsubscribe_url(token)
        values["unsubscribe_url"] = url
        list_unsubscribe = _list_unsubscribe(url, token)

    subject = check_header_value(subject_template.render(values), header="Subject")
    html_body = (
        sanitize_html(_normalize_newlines(html_template.render(values, html=True)))
        if html_template is not None
        else None
    )
    if text_template is not None:
        text_body = _normalize_newlines(text_template.render(values))
    else:
        text_body = html_to_text(html_body or "")
    if campaign.is_announcement:
        text_body, html_body = _announcement_footer(
            text_body, html_body, postal_address=sender.postal_address, url=url
        )
    if not text_body.endswith("\n"):
        text_body += "\n"
    for part, body in (("text", text_body), ("HTML", html_body or "")):
        if len(body) > MAX_RENDERED_BODY_LENGTH:
            raise BuildError(
                f"the rendered {part} part is {len(body):,} characters long; "
                f"the limit is {MAX_RENDERED_BODY_LENGTH:,}"
            )

    message_id = make_message_id(
        campaign_id=campaign.pk,
        delivery_id=recipient.delivery_id,
        address=recipient.address,
        digest=digest,
        domain=domain,
    )
    headers = {
        "Date": date_header(send_time),
        "Message-ID": message_id,
    }
    if list_unsubscribe:
        headers["List-Unsubscribe"] = list_unsubscribe
        headers["List-Unsubscribe-Post"] = ONE_CLICK

    message = CampaignMessage(
        subject=subject,
        body=text_body,
        from_email=format_address(sender.from_name, sender.from_address),
        to=[format_address(recipient.display_name, recipient.address)],
        reply_to=[wire_address(sender.reply_to)] if sender.reply_to else None,
        headers=headers,
        expected_recipient=recipient.address,
        delivery_id=recipient.delivery_id,
        campaign_id=campaign.pk,
    )
    if html_body is not None:
        message.attach_alternative(_html_document(html_body), "text/html")
    message.metadata = {"campaign_id": str(campaign.pk)}
    if recipient.delivery_id is not None:
        message.metadata["delivery_id"] = str(recipient.delivery_id)
    return message


def render_eml(message: EmailMessage) -> bytes:
    """The raw message exactly as serialized for sending: what the outbox and preview show."""
    return message_bytes(message)


def template_problems(campaign: Campaign) -> list[str]:
    """Everything that stops submit or a test send: template errors, and a message that
    cannot be built (for announcements the builder also proves the unsubscribe link and
    the sender's postal address are in both bodies)."""
    problems = [
        f"{name.replace('_', ' ')}: {error}" for name, error in template_errors(campaign).items()
    ]
    if problems:
        return problems
    data = {name: f"[{name}]" for name in campaign_placeholders(campaign.category)}
    data.pop("unsubscribe_url", None)
    sample = Recipient(
        address="preflight@example.com", display_name="", data=data, delivery_id=None, user_id=None
    )
    try:
        build_message(campaign, sample, send_time=timezone.now())
    except MESSAGE_ERRORS as exc:
        problems.append(str(exc))
    return problems
