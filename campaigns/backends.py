"""Mail backends: the guarded EMAIL_BACKEND and the embedded outbox transport."""

from __future__ import annotations

import logging
import os
import re
import smtplib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anymail.backends.base_requests import AnymailRequestsBackend
from anymail.exceptions import AnymailError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.db import DatabaseError
from django.utils.module_loading import import_string

from audit.chain import record_audit

from .guard import layers
from .guard.addresses import envelope_address, message_bytes, sanitized_address, serialize
from .guard.provider import is_anymail
from .guard.vocabulary import GuardViolation
from .models import Campaign
from .smtp import SMTPTransport

logger = logging.getLogger(__name__)


class OutboxBackend(BaseEmailBackend):
    """Writes each message as one `.eml` file holding the exact bytes that would be sent."""

    def __init__(self, *, outbox_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbox_dir = Path(outbox_dir or settings.OUTBOX_DIR)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            raw = message_bytes(message)
            stem = re.sub(
                r"[^A-Za-z0-9._-]",
                "_",
                message.extra_headers.get("Message-ID", "") or uuid.uuid4().hex,
            )
            path = self.outbox_dir / f"{stem.strip('_')[:150]}.eml"
            # Write then rename, so a reader never sees half a message.
            tmp = path.with_suffix(".eml.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, path)
            sent += 1
        return sent


class GuardedBackend(BaseEmailBackend):
    """The project's EMAIL_BACKEND: sends a message through EMAIL_TRANSPORT only if the
    guard finds it addressed to exactly one person.

    Every message passes, campaign delivery or not. All messages of a call are checked
    before any is sent, so one bad message means nothing from that call leaves. For
    anymail transports the provider payload is checked again at the moment it is posted
    (SEND_DEFAULTS are merged only then); for Django's SMTP backend the real `sendmail`
    arguments are checked. A violation is audited and raised as GuardViolation, even with
    fail_silently: silence is for transport trouble, never for a leak.

    One transport connection is reused for the whole call, and across calls when the
    caller opens this backend (`with get_connection() as connection: ...`).
    """

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently)
        transport_path = settings.EMAIL_TRANSPORT
        transport_class = import_string(transport_path)
        if isinstance(transport_class, type) and issubclass(transport_class, GuardedBackend):
            raise ImproperlyConfigured("EMAIL_TRANSPORT must name the real backend, not the guard.")
        self.transport = get_connection(transport_path, fail_silently=fail_silently, **kwargs)
        self._anymail = is_anymail(self.transport)
        # The message being handed to the transport, for the SMTP `sendmail` check.
        self._current: EmailMessage | None = None
        if self._anymail:
            self._hook_anymail_post()

    def open(self) -> bool | None:
        created: bool | None = self.transport.open()
        self._hook_smtp_sendmail()
        return created

    def close(self) -> None:
        self.transport.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        messages = list(email_messages)
        if not messages:
            return 0
        for message in messages:
            try:
                for settings_layer in layers.SETTINGS_LAYERS:
                    settings_layer()
                self._check_before_send(message)
            except GuardViolation as violation:
                violation.message = violation.message or message
                raise self._reported(violation) from None
        created = self.open()
        sent = 0
        try:
            for message in messages:
                self._current = message
                try:
                    count = self._send_one(message)
                except GuardViolation as violation:
                    raise self._reported(violation) from None
                finally:
                    self._current = None
                sent += count
                if count:
                    try:
                        for post_layer in layers.POST_SEND_LAYERS:
                            post_layer(message)
                    except GuardViolation as violation:
                        violation.sent = True
                        raise self._reported(violation) from None
        finally:
            if created:
                self.close()
        return sent

    def _send_one(self, message: EmailMessage) -> int:
        """Hand one message to the transport.

        On an open connection of Django's SMTP backend, send the bytes the guard already
        serialized and read (Django's `_send` would serialize the message again), through
        the same guarded `sendmail`, with the same RCPT TO (`envelope_address`) and error
        handling as Django.
        """
        transport = self.transport
        connection = getattr(transport, "connection", None)
        if type(transport) not in (SMTPBackend, SMTPTransport) or connection is None:
            return int(transport.send_messages([message]) or 0)
        if not message.recipients():
            return 0
        encoding = message.encoding or settings.DEFAULT_CHARSET
        from_email = sanitized_address(message.from_email, encoding)
        recipients = [envelope_address(address, encoding) for address in message.recipients()]
        raw = serialize(message, layer="smtp-envelope")
        with transport._lock:
            try:
                connection.sendmail(from_email, recipients, raw)
            except smtplib.SMTPException:
                if not self.fail_silently:
                    raise
                return 0
        return 1

    def _check_before_send(self, message: EmailMessage) -> None:
        try:
            layers.check_before_send(message, self.transport)
        except AnymailError:
            # The payload cannot be built (an unsupported feature, say): the real send
            # fails the same way before posting, and anymail applies fail_silently to it.
            if not self.fail_silently:
                raise

    def _reported(self, violation: GuardViolation) -> GuardViolation:
        """Write the audit event for `violation` and return it for raising."""
        if violation.message is None:
            violation.message = self._current
        data = violation.audit_data()
        data["transport"] = settings.EMAIL_TRANSPORT
        try:
            campaign = None
            if violation.campaign_id is not None:
                campaign = Campaign.objects.filter(pk=violation.campaign_id).first()
            record_audit("guard.blocked", obj=campaign, data=data)
        except DatabaseError:
            # The refusal stands even if it cannot be recorded; the log keeps it.
            logger.exception("could not audit a guard violation: %s", data)
        logger.error("guard refused a message: %s", data)
        return violation

    def _hook_anymail_post(self) -> None:
        """Check the payload anymail is about to post, after SEND_DEFAULTS were merged."""
        transport = self.transport
        original_post = transport.post_to_esp
        # Requests-based backends serialize inside post_to_esp; intercept the params they
        # are about to send so the check reads exactly those bytes. Any other backend
        # (Amazon SES, a custom post_to_esp) has its payload checked before the call.
        intercept_params = type(transport).post_to_esp is AnymailRequestsBackend.post_to_esp

        def guarded_post_to_esp(payload: Any, message: EmailMessage) -> Any:
            if intercept_params:
                build_params = payload.get_request_params

                def checked_params(api_url: str) -> dict[str, Any]:
                    params: dict[str, Any] = build_params(api_url)
                    for layer in layers.ANYMAIL_PAYLOAD_LAYERS:
                        layer(payload, message, params=params)
                    return params

                payload.get_request_params = checked_params
            else:
                for layer in layers.ANYMAIL_PAYLOAD_LAYERS:
                    layer(payload, message)
            return original_post(payload, message)

        transport.post_to_esp = guarded_post_to_esp

    def _hook_smtp_sendmail(self) -> None:
        """Check the real RCPT TO list and bytes on Django's SMTP connection."""
        connection = getattr(self.transport, "connection", None)
        if not isinstance(self.transport, SMTPBackend) or connection is None:
            return
        if getattr(connection, "_countersign_guarded", False):
            return
        original_sendmail = connection.sendmail

        def guarded_sendmail(
            from_addr: str, to_addrs: Any, msg: Any, *args: Any, **kwargs: Any
        ) -> Any:
            message = self._current
            if message is None:
                raise GuardViolation("smtp-envelope", "sendmail called outside the guard")
            envelope = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
            raw = msg.encode("utf-8") if isinstance(msg, str) else bytes(msg)
            for layer in layers.SMTP_ENVELOPE_LAYERS:
                layer(message, envelope=envelope, raw=raw)
            return original_sendmail(from_addr, to_addrs, msg, *args, **kwargs)

        connection.sendmail = guarded_sendmail
        connection._countersign_guarded = True
