"""System checks for the audit anchor's key.

A check rather than a refusal to load settings, as SECRET_KEY has: the image build runs
collectstatic with nothing but a dummy SECRET_KEY. Every start-up path that runs checks
(`migrate`, which the compose stack runs before web, worker and beat start; `runserver`;
`check --deploy`) stops here with the setting named.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

MIN_KEY_LENGTH = 32


@register(Tags.security)
def check_anchor_key(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    key = str(getattr(settings, "AUDIT_ANCHOR_KEY", "") or "")
    if not key:
        return [
            Error(
                "AUDIT_ANCHOR_KEY (or AUDIT_ANCHOR_KEY_FILE) is required when DEBUG is off: it "
                "signs the audit chain's anchor outside the database.",
                hint='Generate one with: python -c "import secrets; '
                'print(secrets.token_urlsafe(64))"',
                id="audit.E001",
            )
        ]
    if key == settings.SECRET_KEY:
        return [
            Error(
                "AUDIT_ANCHOR_KEY must differ from SECRET_KEY.",
                hint="SECRET_KEY can then be rotated without orphaning the signed anchors, and "
                "the anchors' key is not spread to everything that signs sessions.",
                id="audit.E002",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_anchor_key_strength(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    key = str(getattr(settings, "AUDIT_ANCHOR_KEY", "") or "")
    if key and len(key) < MIN_KEY_LENGTH:
        return [
            Warning(
                f"AUDIT_ANCHOR_KEY has fewer than {MIN_KEY_LENGTH} characters: anchors signed "
                "with a guessable key can be forged.",
                id="audit.W001",
            )
        ]
    return []
