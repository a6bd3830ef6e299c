"""Layers on what an anymail provider receives and reports: the payload and the response.

The payload is checked after anymail merged SEND_DEFAULTS (a default bcc exists nowhere
else); after the send, the provider's own view of the recipients must be the one address."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.utils import getaddresses
from typing import Any

from anymail.backends.base import AnymailBaseBackend
from anymail.backends.base_requests import AnymailRequestsBackend
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from .addresses import (
    address_tokens,
    comparable_address,
    same_address,
    single_address,
    the_recipient,
)
from .vocabulary import (
    BATCH_SWITCHES,
    HEADER_NAME,
    LINE_BREAK,
    RECIPIENT_FIELDS,
    SECRET_KEYS,
    GuardViolation,
    field_key,
    smuggled_header_reason,
    walk_items,
)


def _request_params(payload: Any) -> dict[str, Any] | None:
    get_params = getattr(payload, "get_request_params", None)
    if not callable(get_params):
        return None
    params: dict[str, Any] = get_params(payload.backend.api_url)
    return params


def _json_or_value(data: object) -> object:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


def require_single_recipient_anymail_payload(
    payload: Any, message: EmailMessage, *, params: dict[str, Any] | None = None
) -> None:
    """The provider payload, built by anymail with SEND_DEFAULTS merged, has one recipient.

    `params` are the request parameters about to be posted (the backend passes the
    real ones); without them they are built from `payload`, which is what the preview and
    the pre-send check do. Postmark is checked field by field; every other provider by
    collecting each address found under any recipient field of the payload.
    """
    layer = "anymail-payload"
    recipient = the_recipient(message, layer=layer)
    is_batch = getattr(payload, "is_batch", None)
    if callable(is_batch) and is_batch():
        raise GuardViolation(layer, "anymail would send this as a batch", message=message)
    if getattr(payload.backend, "esp_name", "") == "Postmark":
        _require_single_recipient_postmark(payload, message, recipient, params)
    else:
        _require_single_recipient_generic(payload, message, recipient, params)


# The two Postmark endpoints that take exactly one message.
_POSTMARK_SINGLE_ENDPOINTS = frozenset({"email", "email/withTemplate/"})


def _require_single_recipient_postmark(
    payload: Any, message: EmailMessage, recipient: str, params: dict[str, Any] | None
) -> None:
    layer = "anymail-payload"
    backend = payload.backend
    if getattr(backend, "use_bulk_api", False):
        raise GuardViolation(layer, "POSTMARK_USE_BULK_API is on", message=message)
    if params is None:
        params = _request_params(payload)
    if params is None:
        raise GuardViolation(layer, "cannot build the Postmark request", message=message)
    url = str(params.get("url", ""))
    endpoint = url.removeprefix(str(backend.api_url))
    if endpoint not in _POSTMARK_SINGLE_ENDPOINTS:
        raise GuardViolation(
            layer, f"Postmark endpoint {url!r} is not a single-message endpoint", message=message
        )
    data = _json_or_value(params.get("data"))
    if not isinstance(data, dict):
        raise GuardViolation(layer, "the Postmark body is not one JSON message", message=message)
    for key, value in data.items():
        field = field_key(key)
        if field == "to":
            try:
                address = single_address(value, what="Postmark To")
            except ValueError as error:
                raise GuardViolation(layer, str(error), message=message) from None
            if not same_address(address, recipient):
                raise GuardViolation(
                    layer, f"Postmark To is {address!r}, expected {recipient!r}", message=message
                )
        elif field in RECIPIENT_FIELDS or field in {"messages", *BATCH_SWITCHES}:
            if value not in (None, "", [], {}):
                raise GuardViolation(layer, f"Postmark {key} is {value!r}", message=message)
        elif field in {"subject", "from", "replyto", "tag"} and LINE_BREAK.search(str(value)):
            raise GuardViolation(layer, f"Postmark {key} contains a line break", message=message)
    if "To" not in data:
        raise GuardViolation(layer, "the Postmark message has no To", message=message)
    headers = data.get("Headers") or []
    if not isinstance(headers, list):
        raise GuardViolation(layer, "Postmark Headers is not a list", message=message)
    for header in headers:
        name = str(header.get("Name", "")) if isinstance(header, dict) else ""
        value = str(header.get("Value", "")) if isinstance(header, dict) else ""
        if not HEADER_NAME.fullmatch(name) or LINE_BREAK.search(value):
            raise GuardViolation(
                layer, f"Postmark header {name!r}: {value!r} is malformed", message=message
            )
        reason = smuggled_header_reason(name, value)
        if reason is not None:
            raise GuardViolation(layer, f"Postmark {reason}", message=message)


def _payload_structures(payload: Any, params: dict[str, Any] | None) -> list[object]:
    if params is None:
        params = _request_params(payload)
    if params is not None:
        return [_json_or_value(params.get(name)) for name in ("data", "params", "files", "json")]
    # Providers that do not post with requests (Amazon SES) keep their call arguments here.
    return [
        _json_or_value(getattr(payload, name))
        for name in ("data", "params")
        if hasattr(payload, name)
    ]


def _strings_in(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings_in(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings_in(item)
    elif hasattr(value, "addr_spec"):
        yield str(value.addr_spec)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


def _require_single_recipient_generic(
    payload: Any, message: EmailMessage, recipient: str, params: dict[str, Any] | None
) -> None:
    layer = "anymail-payload"
    structures = _payload_structures(payload, params)
    if not structures or all(s is None for s in structures):
        raise GuardViolation(layer, "the provider payload cannot be inspected", message=message)
    found: set[str] = set()
    for structure in structures:
        for key, value in walk_items(structure):
            field = field_key(key)
            if field in RECIPIENT_FIELDS:
                found |= address_tokens(_strings_in(value))
            elif field in {"messages", "personalizations"} and isinstance(value, list):
                if len(value) > 1:
                    raise GuardViolation(
                        layer, f"the payload holds {len(value)} {key}", message=message
                    )
            elif field in BATCH_SWITCHES and value:
                raise GuardViolation(layer, f"the payload sets {key}={value!r}", message=message)
            elif field == "name" and isinstance(value, str):
                # Header lists as [{"Name": "Bcc", "Value": ...}] (Postmark-like providers).
                header_reason = smuggled_header_reason(value, "")
                if header_reason is not None:
                    raise GuardViolation(layer, f"the payload {header_reason}", message=message)
            elif field == "headers" and isinstance(value, dict):
                for name, header_value in value.items():
                    if LINE_BREAK.search(f"{name}{header_value}"):
                        raise GuardViolation(
                            layer, f"payload header {name!r} has a line break", message=message
                        )
                    header_reason = smuggled_header_reason(name, header_value)
                    if header_reason is not None:
                        raise GuardViolation(layer, f"the payload {header_reason}", message=message)
    if {comparable_address(address) for address in found} != {comparable_address(recipient)}:
        raise GuardViolation(
            layer,
            f"the provider payload addresses {sorted(found)!r}, expected only {recipient!r}",
            message=message,
        )


def require_provider_recipients(message: EmailMessage) -> None:
    """The provider's own report of the recipients is exactly the one address.

    A detector, not a blocker: the message has already left. Anymail fills
    `anymail_status.recipients` while parsing the provider's response (Postmark's
    response carries its own "To"), and the raw response is read here as well.
    """
    layer = "post-send"
    status = getattr(message, "anymail_status", None)
    response = getattr(status, "esp_response", None)
    if status is None or response is None:
        return  # not sent through anymail, or nothing came back to compare
    recipient = the_recipient(message, layer=layer)
    reported = {comparable_address(str(address)) for address in (status.recipients or {})}
    if reported != {comparable_address(recipient)}:
        raise GuardViolation(
            layer,
            f"the provider reports recipients {sorted(reported)!r}, expected only {recipient!r}",
            message=message,
            sent=True,
        )
    try:
        body = response.json()
    except (AttributeError, ValueError):
        return
    if isinstance(body, list):
        if len(body) != 1:
            raise GuardViolation(
                layer, f"the provider answered for {len(body)} messages", message=message, sent=True
            )
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("To"), str):
        provider_to = [addr for _name, addr in getaddresses([body["To"]])]
        if len(provider_to) != 1 or not same_address(provider_to[0], recipient):
            raise GuardViolation(
                layer,
                f"the provider says it sent To {body['To']!r}, expected only {recipient!r}",
                message=message,
                sent=True,
            )


def is_anymail(transport: object) -> bool:
    return isinstance(transport, AnymailBaseBackend)


def build_provider_payload(message: EmailMessage, transport: Any) -> Any:
    """The payload the anymail `transport` would post for `message`, without sending."""
    return transport.build_message_payload(message, transport.send_defaults)


def provider_payload_preview(message: EmailMessage) -> str | None:
    """The JSON the EMAIL_TRANSPORT's HTTP API would receive for `message`, pretty-printed.

    Built by the backend's own code (payload, SEND_DEFAULTS, serialization) without
    sending. None when the transport is not an anymail HTTP backend. Credentials that
    some providers put in the body (Mandrill's "key") are redacted.
    """
    transport = get_connection(settings.EMAIL_TRANSPORT)
    if not isinstance(transport, AnymailRequestsBackend):
        return None
    payload = build_provider_payload(message, transport)
    params = payload.get_request_params(transport.api_url)
    data = _redact(_json_or_value(params.get("data")))
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def _redact(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: "[redacted]" if field_key(key) in SECRET_KEYS else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value
