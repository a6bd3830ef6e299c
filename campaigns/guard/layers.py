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
from anymail.utils import UNSET
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from .addresses import serialization_key
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
from .vocabulary import MERGE_ATTRIBUTES, GuardViolation, present

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


def _check_key(message: EmailMessage, transport: object) -> tuple[Any, ...] | None:
    """What a pre-send check result depends on: the message's content (which fixes its
    bytes), what the guard compares it with, the layers enabled, and the transport.

    None (never memoized) for anything unusual: attachments, merge attributes, esp_extra.
    """
    content = serialization_key(message)
    if content is None or any(present(message, a) for a in (*MERGE_ATTRIBUTES, "esp_extra")):
        return None
    metadata = getattr(message, "metadata", UNSET)
    tags = getattr(message, "tags", UNSET)
    return (
        content,
        tuple((str(k), str(v)) for k, v in metadata.items())
        if isinstance(metadata, dict)
        else repr(metadata),
        tuple(str(t) for t in tags) if isinstance(tags, list | tuple) else repr(tags),
        getattr(message, "expected_recipient", None),
        tuple(PRE_SEND_LAYERS),
        tuple(SETTINGS_LAYERS),
        tuple(ANYMAIL_PAYLOAD_LAYERS),
        tuple(SMTP_ENVELOPE_LAYERS),
        type(transport),
        id(transport),
        settings.UNSUBSCRIBE_MAILTO,
    )


def _already_checked(message: EmailMessage, key: tuple[Any, ...] | None) -> bool:
    return key is not None and message.__dict__.get("_countersign_checked") == key


def _remember_checked(message: EmailMessage, key: tuple[Any, ...] | None) -> None:
    if key is not None:
        message.__dict__["_countersign_checked"] = key


def check_before_send(message: EmailMessage, transport: object) -> None:
    """Run every enabled pre-send layer for `transport`; raise the first violation.

    For anymail this builds a throwaway payload exactly as the backend will (defaults
    merged), so a violation in any message of a batch is found before anything is sent.

    The worker's pre-flight and the backend check the same message: when every layer
    already passed for exactly this content, layers and transport (`_check_key`), the
    second check is that comparison. What the transport really sends (the SMTP envelope
    and bytes, the anymail request) is still checked at the moment it is sent.
    """
    key = _check_key(message, transport)
    if _already_checked(message, key):
        return
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
    _remember_checked(message, key)


def preflight(message: EmailMessage, transport: object | None = None) -> list[GuardViolation]:
    """Every violation any layer finds in `message` (not only the first), sending nothing.

    For the review page's pre-flight checks. Uses settings.EMAIL_TRANSPORT by default.
    """
    if transport is None:
        transport = get_connection(settings.EMAIL_TRANSPORT)
    key = _check_key(message, transport)
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
    if not violations:
        _remember_checked(message, key)
    return violations


def _payload_check(layer: Callable[..., None], message: EmailMessage, transport: Any) -> None:
    try:
        payload = build_provider_payload(message, transport)
    except AnymailError as error:
        raise GuardViolation(
            "anymail-payload", f"the provider payload cannot be built: {error}", message=message
        ) from None
    layer(payload, message)
