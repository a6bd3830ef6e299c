"""What the reviewer sees: real sample messages of the frozen audience and pre-flight checks.

Every sample is built by the same `build_message` the workers use, at a pinned send time,
so the bytes shown here are the bytes stored with the approval.
"""

from __future__ import annotations

import difflib
import email
import email.policy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Lower

from accounts.models import User
from accounts.validators import normalize_address, single_address_error
from audit.models import AuditEvent

from .audience import audience_queryset, iter_audience, member_from_row, parse_address_list
from .guard.layers import preflight
from .guard.provider import provider_payload_preview
from .guard.vocabulary import GuardViolation
from .models import Approval, Campaign, Delivery
from .rendering import (
    MESSAGE_ERRORS,
    CampaignMessage,
    Recipient,
    build_message,
    campaign_placeholders,
    preview_time,
    recipient_for_delivery,
    recipient_for_member,
    recipient_for_test,
    render_eml,
)
from .suppressions import is_suppressed
from .templating import compile_template

RANDOM_SAMPLES = 3
UNSUBSCRIBE_TOKEN = re.compile(r"/u/[A-Za-z0-9_:.=-]+/")


@dataclass
class RenderedMessage:
    """One built message as the screens show it (review samples, the compose preview)."""

    eml: str = ""
    # (name, value exactly as serialized, value as a mail client shows it)
    headers: list[tuple[str, str, str]] = field(default_factory=list)
    text: str = ""
    html: str | None = None
    payload: str | None = None
    error: str = ""
    violations: list[str] = field(default_factory=list)
    message: CampaignMessage | None = None
    to_count: int = 0


@dataclass(kw_only=True)
class Sample(RenderedMessage):
    """A message of the frozen audience, for the review screen."""

    label: str
    delivery: Delivery


@dataclass
class Check:
    label: str
    ok: bool
    detail: str = ""
    blocking: bool = True


@dataclass
class Review:
    campaign: Campaign
    samples: list[Sample]
    checks: list[Check]
    missing_values: dict[str, int]

    @property
    def checks_pass(self) -> bool:
        return all(check.ok for check in self.checks if check.blocking)

    def stored_samples(self) -> list[dict[str, Any]]:
        """What the Approval keeps: the raw messages exactly as the reviewer saw them."""
        return [
            {
                "delivery_id": s.delivery.pk,
                "label": s.label,
                "address": s.delivery.address,
                "eml": s.eml,
            }
            for s in self.samples
        ]


def pick_samples(campaign: Campaign) -> list[tuple[str, Delivery]]:
    """The first recipient, a few picked from the digest, and edge cases (longest, non-ASCII name)."""
    deliveries = Delivery.objects.filter(campaign=campaign).order_by("id")
    ids = list(deliveries.values_list("id", flat=True))
    if not ids:
        return []
    picked: dict[int, str] = {ids[0]: "first recipient"}
    digest = campaign.frozen_digest or "0" * 64
    for i in range(RANDOM_SAMPLES):
        index = int(digest[i * 8 : (i + 1) * 8], 16) % len(ids)
        picked.setdefault(ids[index], f"picked from the digest (#{index + 1})")
    longest: tuple[int, int] | None = None
    non_ascii: int | None = None
    for pk, data in deliveries.values_list("id", "recipient_data").iterator(chunk_size=2000):
        name = f"{data.get('first_name', '')} {data.get('last_name', '')}".strip()
        if longest is None or len(name) > longest[1]:
            longest = (pk, len(name))
        if non_ascii is None and not name.isascii():
            non_ascii = pk
    if longest is not None:
        picked.setdefault(longest[0], "longest display name")
    if non_ascii is not None:
        picked.setdefault(non_ascii, "non-ASCII display name")
    by_id = {d.pk: d for d in deliveries.filter(pk__in=picked).select_related("campaign")}
    return [(label, by_id[pk]) for pk, label in picked.items()]


def _render_sample(campaign: Campaign, label: str, delivery: Delivery) -> Sample:
    sample = Sample(label=label, delivery=delivery)
    try:
        message = build_message(
            campaign, recipient_for_delivery(delivery), send_time=preview_time(campaign)
        )
    except MESSAGE_ERRORS as exc:
        sample.error = f"This recipient would fail: {exc}"
        return sample
    _describe(sample, message)
    return sample


def _describe(sample: RenderedMessage, message: CampaignMessage) -> None:
    """Fill `sample` with what the screens show of `message`: its bytes, each header raw
    and decoded, both parts, and what the guard's pre-flight says."""
    sample.message = message
    raw = render_eml(message)
    sample.eml = raw.decode("utf-8", errors="replace")
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    modern = email.message_from_bytes(raw, policy=email.policy.default)
    # Decoded as a mail client decodes it: RFC 2047 words joined by make_header, which
    # drops the whitespace between adjacent encoded words (policy.default's str() of an
    # address header re-folds a long display name and can show it with a stray space).
    sample.headers = [
        (name, str(value), decoded_header(str(value))) for name, value in parsed.items()
    ]
    to = modern["To"]
    sample.to_count = len(to.addresses) if to is not None else 0
    text_part = modern.get_body(preferencelist=("plain",))
    html_part = modern.get_body(preferencelist=("html",))
    sample.text = text_part.get_content() if text_part is not None else ""
    sample.html = html_part.get_content() if html_part is not None else None
    sample.violations.extend(f"{v.layer}: {v.reason}" for v in preflight(message))
    try:
        sample.payload = provider_payload_preview(message)
    except GuardViolation as exc:
        sample.violations.append(f"{exc.layer}: {exc.reason}")


def decoded_header(value: str) -> str:
    """A raw header value as a mail client shows it (encoded words decoded, folds unfolded)."""
    try:
        return str(make_header(decode_header(value.replace("\r\n", "").replace("\n", ""))))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return value


def render_for(campaign: Campaign, delivery: Delivery, label: str) -> Sample:
    """One more sample, for a recipient the reviewer chose by address."""
    return _render_sample(campaign, label, delivery)


# --- The compose preview: the message of a campaign not yet saved ------------------------


class PreviewRefused(ValueError):
    """The composer asked to preview the message of someone the preview may not show."""


@dataclass
class ComposePreview:
    address: str
    # How the recipient was chosen, shown beside the address.
    chosen: str
    rendering: RenderedMessage


def _audience_member(campaign: Campaign, address: str) -> User | None:
    """`address` if it belongs to the campaign's audience as its filters now say (the same
    rules as `iter_audience`, looked up by address instead of walking the audience)."""
    wanted = normalize_address(address)
    if campaign.audience_addresses.strip():
        if wanted not in set(parse_address_list(campaign.audience_addresses)[0]):
            return None
    member = (
        audience_queryset(campaign)
        .annotate(_address=Lower("email"))
        .filter(_address=wanted)
        .only("id", "email", "first_name", "last_name", "locale", "attributes")
        .first()
    )
    if member is None or single_address_error(member.email) is not None:
        return None
    return member


def preview_recipient(campaign: Campaign, *, by: User, address: str) -> tuple[Recipient, str]:
    """Whom the compose preview is for, and how they were chosen.

    No address: the first recipient of the audience as the form now defines it, or the
    composer's own data when that audience is empty. An address: a member of that
    audience (not suppressed), or one of the composer's seed addresses with their own
    data, as a test send renders it. Nobody else: the preview must not become a way to
    read any account's values through a template.
    """
    address = address.strip()
    seeds = by.seed_address_list()
    if not address:
        first: Mapping[str, Any] | None = None
        # Stops at the first row; the generator, dropped, closes its cursor.
        for row in iter_audience(campaign):
            first = row
            break
        if first is None:
            return (
                recipient_for_test(campaign, by, seeds[0]),
                "you: the audience is empty",
            )
        return recipient_for_member(member_from_row(first)), "the first recipient of the audience"
    problem = single_address_error(address)
    if problem is not None:
        raise PreviewRefused(f"{address} {problem}.")
    if normalize_address(address) in {normalize_address(seed) for seed in seeds}:
        return recipient_for_test(campaign, by, address), "you: one of your seed addresses"
    member = _audience_member(campaign, address)
    if member is None:
        raise PreviewRefused(
            f"{address} is neither in this campaign's audience (as the form now defines it) "
            "nor one of your seed addresses."
        )
    if is_suppressed(member.email, campaign.category):
        raise PreviewRefused(
            f"{address} is suppressed (unsubscribed, bounced or blocked): "
            "this campaign will not be sent to them."
        )
    return recipient_for_member(member), "a member of the audience"


def build_preview(campaign: Campaign, *, by: User, address: str) -> ComposePreview:
    """The message `campaign` (saved or not, never saved here) gives one recipient.

    Built by `build_message`, the sender's own builder, at the preview time the review
    screen uses. Raises PreviewRefused for a recipient the preview may not show.
    """
    recipient, chosen = preview_recipient(campaign, by=by, address=address)
    rendering = RenderedMessage()
    try:
        message = build_message(campaign, recipient, send_time=preview_time(campaign))
    except MESSAGE_ERRORS as exc:
        rendering.error = f"This recipient would fail: {exc}"
    else:
        _describe(rendering, message)
    return ComposePreview(address=recipient.address, chosen=chosen, rendering=rendering)


def count_missing_values(campaign: Campaign) -> dict[str, int]:
    """How many recipients lack a value for each placeholder used without a default."""
    allowed = campaign_placeholders(campaign.category)
    required: set[str] = set()
    for source in (campaign.subject_template, campaign.text_template, campaign.html_template):
        if source:
            required |= compile_template(source, allowed=allowed).required
    required.discard("unsubscribe_url")
    counts: dict[str, int] = {}
    deliveries = Delivery.objects.filter(campaign=campaign)
    for name in sorted(required):
        present = Q(**{f"recipient_data__{name}__isnull": False}) & ~Q(
            **{f"recipient_data__{name}": ""}
        )
        counts[name] = deliveries.exclude(present).count()
    return counts


def build_review(campaign: Campaign) -> Review:
    samples = [_render_sample(campaign, label, d) for label, d in pick_samples(campaign)]
    missing = count_missing_values(campaign)
    rendered = [s for s in samples if s.message is not None]
    checks = [
        Check(
            "One recipient per message",
            all(not s.violations for s in rendered) and bool(rendered),
            "; ".join(v for s in samples for v in s.violations),
        ),
        Check(
            "No unresolved placeholder in any sample",
            all("{{" not in s.eml and "{%" not in s.eml for s in rendered),
        ),
        Check(
            "No foreign address in any render",
            all(not any(v.startswith("content") for v in s.violations) for s in rendered),
        ),
        Check(
            "Sender domain configured",
            bool(campaign.sender.message_id_domain.strip())
            and campaign.sender.from_address.rsplit("@", 1)[-1] != "",
            campaign.sender.message_id_domain,
        ),
        Check(
            "Links use https (PUBLIC_BASE_URL)",
            not campaign.is_announcement or settings.PUBLIC_BASE_URL.startswith("https://"),
            f"unsubscribe links point at {settings.PUBLIC_BASE_URL}; mail clients only offer "
            "one-click unsubscribe over https",
            blocking=False,
        ),
        Check(
            "Every recipient has a value for each placeholder without a default",
            not any(missing.values()),
            ", ".join(f"{n} missing for {c}" for n, c in missing.items() if c)
            + (
                " — those deliveries will fail, not get a fallback" if any(missing.values()) else ""
            ),
            blocking=False,
        ),
    ]
    if campaign.is_announcement:
        checks.insert(
            1,
            Check(
                "Unsubscribe headers present (List-Unsubscribe, One-Click)",
                bool(rendered)
                and all(
                    "List-Unsubscribe" in s.message.extra_headers
                    and s.message.extra_headers.get("List-Unsubscribe-Post")
                    == "List-Unsubscribe=One-Click"
                    for s in rendered
                    if s.message is not None
                ),
            ),
        )
    if getattr(settings, "EMAIL_TRANSPORT", "").startswith("anymail."):
        checks.append(
            Check(
                "Provider payload has exactly one recipient",
                all(s.payload is not None for s in rendered)
                and all(not s.violations for s in rendered),
            )
        )
    return Review(campaign=campaign, samples=samples, checks=checks, missing_values=missing)


@dataclass
class SinceLastReview:
    """What changed between the messages a reviewer last decided on and the ones now."""

    decision: str
    reviewer: str
    decided_at: Any
    comment: str
    fields: list[str]
    # (part name, unified diff lines); empty when that part is unchanged.
    diffs: list[tuple[str, list[str]]]


def _parts(eml: str) -> dict[str, str]:
    message = email.message_from_string(eml, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    parts = {
        "Subject": decoded_header(str(message.get("Subject", ""))),
        "Text part": text.get_content() if text is not None else "",
        "HTML part": html.get_content() if html is not None else "",
    }
    # The unsubscribe token is signed per delivery, and a resubmission makes new deliveries:
    # without this every diff would show the link as changed.
    return {name: UNSUBSCRIBE_TOKEN.sub("/u/<token>/", value) for name, value in parts.items()}


def since_last_review(campaign: Campaign, review: Review) -> SinceLastReview | None:
    """For a resubmission: the last decision, the fields edited since, and a diff of the
    first recipient's message as the reviewer saw it then and as it is now. (The first
    recipient's sample stands for every message: the templates are the same for all.)"""
    last = campaign.approvals.select_related("reviewer").order_by("-created_at").first()
    if not isinstance(last, Approval) or not review.samples:
        return None
    edits = AuditEvent.objects.filter(
        object_type="campaigns.campaign",
        object_id=str(campaign.pk),
        action="campaign.edited",
        created_at__gt=last.created_at,
    ).values_list("data", flat=True)
    fields = sorted({name for data in edits for name in (data or {}).get("fields", [])})
    before = next((s for s in last.samples if s.get("label") == "first recipient"), None)
    now = review.samples[0]
    diffs: list[tuple[str, list[str]]] = []
    if before is not None and now.eml:
        old, new = _parts(before["eml"]), _parts(now.eml)
        for part in old:
            lines = list(
                difflib.unified_diff(
                    old[part].splitlines(),
                    new[part].splitlines(),
                    "last review",
                    "now",
                    lineterm="",
                )
            )
            # The ---/+++ file header says nothing the page does not already say.
            diffs.append((part, [line for line in lines if not line.startswith(("---", "+++"))]))
    return SinceLastReview(
        decision=last.get_decision_display(),
        reviewer=str(last.reviewer),
        decided_at=last.created_at,
        comment=last.comment,
        fields=[
            str(getattr(Campaign._meta.get_field(f), "verbose_name", f))
            for f in fields
            if f != "audience_count"
        ],
        diffs=diffs,
    )
