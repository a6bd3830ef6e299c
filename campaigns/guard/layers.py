"""Which layers run, and the two ways of running them: stop at the first, or list them all.

The registries are deliberately not settings: nobody can switch a layer off in a
deployment. Tests narrow them (monkeypatching this module's lists) to prove that each
layer alone blocks its case. Readers look them up here at call time for that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from anymail.exceptions import AnymailError
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from .envelope import require_single_smtp_envelope
from .mail_settings import require_safe_mail_settings
from .message import (
    require_clean_headers,
    require_no_foreign_addresses,
    require_no_merge,
    require_single_recipient,
)
from .provider import (
    build_provider_payload,
    is_anymail,
    require_provider_recipients,
    require_single_recipient_anymail_payload,
)
from .vocabulary import GuardViolation

MessageLayer = Callable[[EmailMessage], None]
PRE_SEND_LAYERS: list[MessageLayer] = [
    require_single_recipient,
    require_clean_headers,
    require_no_merge,
    require_no_foreign_addresses,
]
SETTINGS_LAYERS: list[Callable[[], None]] = [require_safe_mail_settings]
ANYMAIL_PAYLOAD_LAYERS: list[Callable[..., None]] = [require_single_recipient_anymail_payload]
SMTP_ENVELOPE_LAYERS: list[Callable[..., None]] = [require_single_smtp_envelope]
POST_SEND_LAYERS: list[MessageLayer] = [require_provider_recipients]


def check_before_send(message: EmailMessage, transport: object) -> None:
    """Run every enabled pre-send layer for `transport`; raise the first violation.

    For anymail this builds a throwaway payload exactly as the backend will (defaults
    merged), so a violation in any message of a batch is found before anything is sent.
    """
    for layer in PRE_SEND_LAYERS:
        layer(message)
    if is_anymail(transport):
        if ANYMAIL_PAYLOAD_LAYERS:
            payload = build_provider_payload(message, transport)
            for payload_layer in ANYMAIL_PAYLOAD_LAYERS:
                payload_layer(payload, message)
    else:
        for envelope_layer in SMTP_ENVELOPE_LAYERS:
            envelope_layer(message)


def preflight(message: EmailMessage, transport: object | None = None) -> list[GuardViolation]:
    """Every violation any layer finds in `message` (not only the first), sending nothing.

    For the review page's pre-flight checks. Uses settings.EMAIL_TRANSPORT by default.
    """
    if transport is None:
        transport = get_connection(settings.EMAIL_TRANSPORT)
    checks: list[Callable[[], None]] = [partial(layer, message) for layer in PRE_SEND_LAYERS]
    checks.extend(SETTINGS_LAYERS)
    if is_anymail(transport):
        checks.extend(
            partial(_payload_check, layer, message, transport) for layer in ANYMAIL_PAYLOAD_LAYERS
        )
    else:
        checks.extend(partial(layer, message) for layer in SMTP_ENVELOPE_LAYERS)
    violations: list[GuardViolation] = []
    for check in checks:
        try:
            check()
        except GuardViolation as violation:
            violation.message = violation.message or message
            violations.append(violation)
    return violations


def _payload_check(layer: Callable[..., None], message: EmailMessage, transport: Any) -> None:
    try:
        payload = build_provider_payload(message, transport)
    except AnymailError as error:
        raise GuardViolation(
            "anymail-payload", f"the provider payload cannot be built: {error}", message=message
        ) from None
    layer(payload, message)
