"""What an approval binds to: the content digest and the audience hash.

The content digest covers everything that shapes a campaign's messages; the audience
hash covers exactly who receives them and with which values. The reviewer approves the
digest, the worker re-checks it before every batch, and any edit changes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any

from .models import Campaign


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def content_digest(campaign: Campaign) -> str:
    """The approval digest: sha256 over everything that shapes the campaign's messages.

    Kept on the instance with the content it was computed from, and computed again
    whenever that content differs: the builder asks for it once per message.
    """
    content = digest_content(campaign)
    cached = campaign.__dict__.get("_content_digest")
    if cached is not None and cached[0] == content:
        digest: str = cached[1]
        return digest
    digest = digest_of_content(content)
    campaign.__dict__["_content_digest"] = (content, digest)
    return digest


def digest_of_content(content: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `digest_content()`; the compliance record's offline
    verifier (scripts/verify_record.py) repeats exactly this with the standard library."""
    return hashlib.sha256(_canonical_json(content)).hexdigest()


def digest_content(campaign: Campaign) -> dict[str, Any]:
    """Everything the approval digest covers, as the plain values that are hashed."""
    sender = campaign.sender
    scheduled_at = campaign.scheduled_at
    return {
        "version": 1,
        "campaign_id": campaign.pk,
        "category": campaign.category,
        "sender": {
            "from_name": sender.from_name,
            "from_address": sender.from_address,
            "reply_to": sender.reply_to,
            "postal_address": sender.postal_address,
            "message_id_domain": sender.message_id_domain,
        },
        "subject_template": campaign.subject_template,
        "text_template": campaign.text_template,
        "html_template": campaign.html_template,
        "scheduled_at": scheduled_at.astimezone(UTC).isoformat() if scheduled_at else None,
        "audience_hash": campaign.audience_hash,
    }


AUDIENCE_HASH_START = b"countersign.audience.v1\n"
# Text json.dumps(ensure_ascii=False) writes as it is, between quotes: no quote, backslash
# or control character (the only characters it escapes then).
_JSON_AS_IS = re.compile(r'[^"\\\x00-\x1f]*')


def audience_hash(rows: Iterable[tuple[int, str, Mapping[str, str] | str]]) -> str:
    """sha256 over (user id, lower-case address, recipient data), one line per person.

    Each line is the canonical JSON of `[user_id, address.lower(), data]`. `data` is the
    mapping, or its canonical JSON text as PostgreSQL makes it (`AUDIENCE_DATA_SQL`), so
    a million rows need not be decoded and encoded again in Python.

    Rows must come ordered by user id (`order_by("user_id")`), one per user: the hash is
    computed as they stream in, so 100,000 rows never sit in memory at once.
    """
    digest = hashlib.sha256(AUDIENCE_HASH_START)
    previous: int | None = None
    for user_id, address, data in rows:
        if previous is not None and user_id <= previous:
            raise ValueError(
                f"audience rows must be ordered by user id, one per user ({user_id} after {previous})"
            )
        previous = user_id
        if isinstance(data, str):
            lowered = address.lower()
            address_json = (
                f'"{lowered}"'
                if _JSON_AS_IS.fullmatch(lowered)
                else json.dumps(lowered, ensure_ascii=False)
            )
            digest.update(f"[{int(user_id)},{address_json},{data}]".encode())
        else:
            digest.update(_canonical_json([user_id, address.lower(), dict(data)]))
        digest.update(b"\n")
    return digest.hexdigest()


# PostgreSQL: a delivery's recipient data (an object of strings) as `_canonical_json`
# writes it. Keys in code point order (UTF-8 bytes in "C" order are the same order), no
# spaces; jsonb writes a string with exactly the escapes json.dumps(ensure_ascii=False)
# uses. A test holds the two to each other on awkward keys and values.
AUDIENCE_DATA_SQL = """'{' || COALESCE((
    SELECT string_agg(to_jsonb(e.key)::text || ':' || e.value::text, ',' ORDER BY e.key COLLATE "C")
    FROM jsonb_each(d.recipient_data) AS e
), '') || '}'"""


def sample_sha256(eml: str) -> str:
    """The hash of a stored sample message: sha256 of its UTF-8 bytes, as kept in the Approval."""
    return hashlib.sha256(eml.encode("utf-8")).hexdigest()
