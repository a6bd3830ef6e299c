"""The fan-out: one message per delivery, claimed from the ledger, sent once, recorded.

PostgreSQL (or the SQLite file) is the source of truth; the broker only says "there is
work". Every state change of a delivery is a single-row UPDATE fenced on the expected
status and claim token, so a lost, repeated or late task can never send twice: at most it
finds nothing to do.

Delivery life: pending -> claimed -> sending -> sent | retry_wait | failed | skipped |
blocked | unknown. Only what the provider provably did not accept is retried; anything
ambiguous becomes `unknown` and waits for an audited operator decision.
"""

from __future__ import annotations

import logging
import random
import smtplib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import requests
from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError
from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Case, Count, F, Q, Value, When
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address
from audit.chain import record_audit

from .digests import content_digest
from .guard.layers import preflight
from .guard.vocabulary import GuardViolation
from .models import Campaign, Delivery, ProviderEvent, SendingSwitch, Suppression
from .ratelimit import shared_limiter
from .rendering import MESSAGE_ERRORS, build_message, recipient_for_delivery
from .suppressions import add_suppression, suppressed_among
from .transitions import transition_if

logger = logging.getLogger(__name__)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600
# Deliveries committed `sending` (and then `sent`) per UPDATE; also the most a crash can
# leave `unknown` per worker process (SEND_CHUNK_SIZE overrides it).
DEFAULT_SEND_CHUNK_SIZE = 10


# --- Launch ---------------------------------------------------------------------------------


def launch_if_due(
    campaign: Campaign, *, by: User | None = None, now: datetime | None = None
) -> bool:
    """Move an approved campaign to `sending` if its time has come; dispatch after commit.

    Called in the approval transaction and by the beat poller. Scheduled campaigns wait in
    `approved`: the database is polled, never a long Celery countdown (Redis would redeliver
    a task that outlives its visibility timeout).
    """
    now = now or timezone.now()
    if campaign.scheduled_at is not None and campaign.scheduled_at > now:
        return False
    if not transition_if(
        campaign.pk,
        "start",
        by=by,
        data={"scheduled_at": campaign.scheduled_at},
        sending_started_at=now,
    ):
        return False
    campaign.status = Campaign.Status.SENDING
    campaign.sending_started_at = now
    dispatch_on_commit(campaign.pk)
    return True


# The task is named, not imported: tasks.py sits above this module and calls into it.
SEND_BATCH_TASK = "countersign.send_batch"


def dispatch_on_commit(campaign_id: int) -> None:
    """After the current transaction commits, tell the workers there is work to pull."""
    parallel = max(1, int(getattr(settings, "SEND_PARALLEL_BATCHES", 2)))
    for _ in range(parallel):
        transaction.on_commit(partial(current_app.send_task, SEND_BATCH_TASK, args=[campaign_id]))


def launch_scheduled(now: datetime | None = None) -> int:
    now = now or timezone.now()
    launched = 0
    due = Campaign.objects.filter(status=Campaign.Status.APPROVED, scheduled_at__lte=now)
    for campaign in due:
        with transaction.atomic():
            if launch_if_due(campaign, now=now):
                launched += 1
    return launched


# --- Claim ------------------------------------------------------------------------------------


def _due(campaign_id: int, now: datetime) -> Q:
    return Q(campaign_id=campaign_id) & (
        Q(status=Delivery.Status.PENDING)
        | Q(status=Delivery.Status.RETRY_WAIT, next_attempt_at__lte=now)
    )


def claim_deliveries(
    campaign_id: int, *, limit: int, now: datetime | None = None
) -> tuple[uuid.UUID, list[int]]:
    """Claim up to `limit` due deliveries for this worker, with a lease.

    PostgreSQL: one UPDATE over a SELECT ... FOR UPDATE SKIP LOCKED (`_CLAIM_SQL`), so
    concurrent workers take disjoint rows without waiting. SQLite has no SKIP LOCKED, but
    its IMMEDIATE transactions serialize writers, and the UPDATE is conditional on the
    status anyway.
    """
    now = now or timezone.now()
    token = uuid.uuid4()
    lease = now + timedelta(seconds=settings.CLAIM_LEASE_SECONDS)
    if _set_based():
        # One statement: the due rows locked (skipping those another worker holds) and
        # claimed, their ids returned. A locking SELECT, an UPDATE and a re-read were
        # five round trips with the transaction's own.
        rows, _count = _execute(
            _CLAIM_SQL,
            [
                Delivery.Status.CLAIMED,
                token,
                lease,
                campaign_id,
                Delivery.Status.PENDING,
                Delivery.Status.RETRY_WAIT,
                now,
                limit,
                Delivery.Status.PENDING,
                Delivery.Status.RETRY_WAIT,
            ],
        )
        return token, sorted(row[0] for row in rows)
    with transaction.atomic():
        candidates = Delivery.objects.filter(_due(campaign_id, now)).order_by("id")
        if db_connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        ids = list(candidates.values_list("id", flat=True)[:limit])
        if not ids:
            return token, []
        Delivery.objects.filter(Q(pk__in=ids) & _due(campaign_id, now)).update(
            status=Delivery.Status.CLAIMED, claim_token=token, lease_expires_at=lease
        )
    # With the campaign, the work index (campaign, status) finds the claimed rows; without
    # it, every status entry of every campaign the ledger ever held is read.
    claimed = list(
        Delivery.objects.filter(
            campaign_id=campaign_id, claim_token=token, status=Delivery.Status.CLAIMED
        )
        .order_by("id")
        .values_list("id", flat=True)
    )
    return token, claimed


def _fenced(delivery_id: int, token: uuid.UUID, expected: str, **changes: Any) -> bool:
    """Single-row UPDATE that only applies if the row is still ours in the expected state."""
    changes.setdefault("updated_at", timezone.now())
    count = Delivery.objects.filter(pk=delivery_id, claim_token=token, status=expected).update(
        **changes
    )
    if count != 1:
        logger.warning(
            "delivery %s was no longer %s for claim %s; left alone", delivery_id, expected, token
        )
    return count == 1


def release_claims(token: uuid.UUID, campaign_id: int) -> int:
    """Give unsent claimed rows back (pause, stop, shutdown): they never reached the provider.

    The campaign lets the work index (campaign, status) find them.
    """
    rows = Delivery.objects.filter(
        campaign_id=campaign_id, claim_token=token, status=Delivery.Status.CLAIMED
    )
    return rows.update(
        status=Delivery.Status.PENDING,
        claim_token=None,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )


# --- Outcomes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str
    error: str = ""
    suppress_reason: str = ""


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


def classify_failure(exc: BaseException) -> Outcome:
    """Decide what a send exception means. Retry only what provably was not accepted."""
    text = f"{type(exc).__name__}: {exc}"[:1000]
    if isinstance(exc, GuardViolation):
        return Outcome(Delivery.Status.BLOCKED, text)

    if isinstance(exc, AnymailRecipientsRefused):
        return Outcome(Delivery.Status.FAILED, text, Suppression.Reason.HARD_BOUNCE)
    if isinstance(exc, AnymailRequestsAPIError):
        cause = exc.__cause__
        if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(
            cause, requests.exceptions.ConnectTimeout
        ):
            return Outcome(Delivery.Status.RETRY_WAIT, text)
        if isinstance(cause, requests.exceptions.ConnectionError) and not isinstance(
            cause, requests.exceptions.ReadTimeout
        ):
            # Refused or unreachable before a request went out.
            if "Connection refused" in str(cause) or "Failed to establish" in str(cause):
                return Outcome(Delivery.Status.RETRY_WAIT, text)
            return Outcome(Delivery.Status.UNKNOWN, text)
        code = _status_code(exc)
        if code in (429, 503):
            return Outcome(Delivery.Status.RETRY_WAIT, text)
        if code is not None and 400 <= code < 500:
            return Outcome(Delivery.Status.FAILED, text)
        return Outcome(Delivery.Status.UNKNOWN, text)

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(400 <= c < 500 for c in codes):
            return Outcome(Delivery.Status.RETRY_WAIT, text)
        return Outcome(Delivery.Status.FAILED, text, Suppression.Reason.HARD_BOUNCE)
    if isinstance(exc, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)):
        if 400 <= exc.smtp_code < 500:
            return Outcome(Delivery.Status.RETRY_WAIT, text)
        return Outcome(Delivery.Status.FAILED, text)
    if isinstance(exc, smtplib.SMTPConnectError | ConnectionRefusedError):
        return Outcome(Delivery.Status.RETRY_WAIT, text)
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code in (
        421,
        450,
        451,
        452,
        454,
    ):
        return Outcome(Delivery.Status.RETRY_WAIT, text)
    # Timeouts, disconnects after DATA, anything unexpected: the provider may have it.
    return Outcome(Delivery.Status.UNKNOWN, text)


def backoff_seconds(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter (0.5x to 1.5x), capped."""
    rng = rng or random.Random()
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(0, attempts - 1)))
    return float(base * (0.5 + rng.random()))


def _record_outcome(delivery: Delivery, token: uuid.UUID, outcome: Outcome, now: datetime) -> None:
    changes: dict[str, Any] = {"last_error": outcome.error, "lease_expires_at": None}
    status = outcome.status
    if status == Delivery.Status.RETRY_WAIT:
        if delivery.attempts >= MAX_ATTEMPTS:
            status = Delivery.Status.FAILED
            changes["last_error"] = (
                f"gave up after {delivery.attempts} attempts; last: {outcome.error}"
            )
        else:
            changes["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(delivery.attempts))
    changes["status"] = status
    if status != Delivery.Status.UNKNOWN:
        changes["claim_token"] = None
    _fenced(delivery.pk, token, Delivery.Status.SENDING, **changes)
    if outcome.suppress_reason:
        add_suppression(
            delivery.address,
            outcome.suppress_reason,
            source=f"send failure, delivery {delivery.pk}",
        )


def pause_for_guard(campaign_id: int, violation: GuardViolation, delivery_id: int | None) -> None:
    transition_if(
        campaign_id,
        "guard_pause",
        data={"layer": violation.layer, "reason": violation.reason, "delivery_id": delivery_id},
        pause_reason=f"guard ({violation.layer}): {violation.reason}",
    )


# --- The batch --------------------------------------------------------------------------------


def _end_claim(delivery: Delivery, token: uuid.UUID, status: str, why: str) -> None:
    """Close a claimed delivery that will not go out: skipped (cancelled, suppressed since
    approval) or failed (its message cannot be built)."""
    _fenced(
        delivery.pk,
        token,
        Delivery.Status.CLAIMED,
        status=status,
        claim_token=None,
        last_error=why[:1000],
    )


_STATE_SQL = (
    f"SELECT c.{_q('status')}, EXISTS(SELECT 1 FROM {_q(SendingSwitch._meta.db_table)} s "
    f"WHERE s.{_q('id')} = 1 AND s.{_q('halted')}) "
    f"FROM {_q(Campaign._meta.db_table)} c WHERE c.{_q('id')} = %s"
)


def stop_reason(campaign_id: int) -> str:
    """ "" while the campaign may send; otherwise why not ("paused", "cancelled", ...).

    One query for the campaign and the emergency switch. The send loop reads it through
    a `StateWatch`, so a pause, cancel or emergency stop made anywhere stops every worker
    within `SEND_STATE_RECHECK_SECONDS`.
    """
    # Plain SQL: this runs often, and the ORM would spend more time compiling the query
    # than the database spends answering it.
    with db_connection.cursor() as cursor:
        cursor.execute(_STATE_SQL, [campaign_id])
        row = cursor.fetchone()
    if row is None:
        return "not sending"
    status, halted = row
    if halted:
        return "emergency stop"
    if status == Campaign.Status.CANCELLED:
        return "cancelled"
    if status != Campaign.Status.SENDING:
        return "paused"
    return ""


DEFAULT_STATE_RECHECK_SECONDS = 0.25


class StateWatch:
    """The campaign's `stop_reason`, read again once `interval` seconds have passed.

    Before every message the send loop asks `current()`: a query at most every quarter
    second instead of one per message, so a stop made anywhere reaches every worker
    within that interval plus the one message already on the wire.
    """

    def __init__(
        self,
        campaign_id: int,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval is None:
            interval = float(
                getattr(settings, "SEND_STATE_RECHECK_SECONDS", DEFAULT_STATE_RECHECK_SECONDS)
            )
        self.campaign_id = campaign_id
        self.interval = max(0.0, interval)
        self.clock = clock
        self.reads = 0
        self._reason = ""
        self._read_at: float | None = None

    def fresh(self) -> str:
        self._reason = stop_reason(self.campaign_id)
        self._read_at = self.clock()
        self.reads += 1
        return self._reason

    def current(self) -> str:
        if self._read_at is None or self.clock() - self._read_at >= self.interval:
            return self.fresh()
        return self._reason


@dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    other: int = 0
    released: int = 0
    stopped: str = ""

    @property
    def more_work(self) -> bool:
        return not self.stopped and self.claimed > 0


def send_batch(
    campaign_id: int, *, limit: int | None = None, backend: BaseEmailBackend | None = None
) -> BatchResult:
    """Claim a batch and send each delivery once. Returns what happened.

    Whatever a batch can answer once is read once: the campaign and its sender, the
    suppressions of every claimed address (one query), the compiled templates. The
    deliveries then go out in chunks of SEND_CHUNK_SIZE: each message of a chunk is
    built and passes the guard's pre-flight, one fenced UPDATE commits the chunk
    `sending`, the messages go out one by one on the reused connection (each after a
    look at the campaign's state, re-read at most every SEND_STATE_RECHECK_SECONDS, and a
    token from the shared limiter, each through the guarded backend), and a fenced
    UPDATE records the chunk `sent`, together with the next chunk's `sending` mark or on
    its own when the batch ends (`Accepted`). Only one chunk is ever `sending`, so a
    crash leaves at most one chunk per worker process ambiguous (`unknown`).
    """
    result = BatchResult()
    campaign = Campaign.objects.select_related("sender").filter(pk=campaign_id).first()
    if campaign is None or campaign.status != Campaign.Status.SENDING or SendingSwitch.is_halted():
        result.stopped = "not sending"
        return result
    # The approval binds to a digest: if anything that shapes the messages changed since,
    # nothing more goes out.
    if content_digest(campaign) != campaign.approved_digest:
        pause_for_guard(
            campaign.pk,
            GuardViolation("digest", "the content no longer matches the approved digest"),
            None,
        )
        result.stopped = "digest mismatch"
        return result

    token, ids = claim_deliveries(campaign.pk, limit=limit or settings.SEND_BATCH_SIZE)
    result.claimed = len(ids)
    if not ids:
        complete_if_done(campaign.pk)
        return result

    deliveries = list(Delivery.objects.filter(pk__in=ids).order_by("id"))
    suppressed = suppressed_among([d.address for d in deliveries], campaign.category)
    chunk_size = send_chunk_size()
    limiter = shared_limiter()
    connection = backend or get_connection()
    watch = StateWatch(campaign.pk)
    accepted = Accepted(token, result)
    try:
        # Open it here, once: a backend opened by its caller stays open across
        # send_messages calls; otherwise every message would connect (and log in) anew.
        connection.open()
        for start in range(0, len(deliveries), chunk_size):
            chunk = deliveries[start : start + chunk_size]
            stopped = _send_chunk(
                campaign, chunk, token, connection, limiter, suppressed, watch, accepted
            )
            if stopped:
                result.stopped = stopped
                break
    finally:
        try:
            connection.close()
        except Exception:  # closing a broken connection must not hide the real outcome
            logger.exception("closing the mail connection failed")
        accepted.record()
        result.released = release_claims(token, campaign.pk)
    complete_if_done(campaign.pk)
    return result


def send_chunk_size() -> int:
    return max(1, int(getattr(settings, "SEND_CHUNK_SIZE", DEFAULT_SEND_CHUNK_SIZE)))


def _send_chunk(
    campaign: Campaign,
    chunk: list[Delivery],
    token: uuid.UUID,
    connection: BaseEmailBackend,
    limiter: Any,
    suppressed: set[str],
    watch: StateWatch,
    accepted: Accepted,
) -> str:
    """Send one chunk of claimed deliveries; return why the batch must stop, or "".

    What the provider accepts is kept in `accepted` and recorded `sent` with the next
    chunk's `sending` mark, in one statement (or when the batch ends): one commit per
    chunk instead of two, and still never more than one chunk `sending` at a time.
    """
    result = accepted.result
    why = watch.current()
    if why == "cancelled":
        for delivery in chunk:
            _end_claim(delivery, token, Delivery.Status.SKIPPED, "campaign cancelled")
            result.other += 1
        return ""
    if why:
        # Paused or emergency stop: stop before the next message on every worker.
        return why

    # Build and guard every message of the chunk while the rows are only `claimed`.
    now = timezone.now()
    transport = getattr(connection, "transport", connection)
    ready: list[tuple[Delivery, EmailMessage]] = []
    message: EmailMessage
    for delivery in chunk:
        if normalize_address(delivery.address) in suppressed:
            _end_claim(delivery, token, Delivery.Status.SKIPPED, "suppressed")
            result.other += 1
            continue
        try:
            message = build_message(campaign, recipient_for_delivery(delivery), send_time=now)
        except MESSAGE_ERRORS as exc:
            # E.g. a placeholder without a default and no value: this recipient fails.
            _end_claim(delivery, token, Delivery.Status.FAILED, f"cannot build the message: {exc}")
            result.other += 1
            continue
        violations = preflight(message, transport)
        if violations:
            _block(campaign, delivery, token, Delivery.Status.CLAIMED, violations[0])
            result.other += 1
            # The violation paused the campaign; say so as any other pause would.
            return watch.fresh() or "guard"
        ready.append((delivery, message))
    if not ready:
        return ""

    # Commit `sending` before the network calls: if this worker dies now, the sweeper
    # turns these rows into `unknown` instead of sending them again. The previous chunk's
    # accepted rows become `sent` in the same commit.
    ready = _mark_sending(ready, token, now, accepted)
    stopped = ""
    # Each message leaves right after its token is taken (so the shared rate holds for
    # every window), and the chunk as a whole waits at most a quarter of the lease for
    # them: its rows are `sending` meanwhile, and the sweeper must not find them expired.
    wait_budget = float(settings.CLAIM_LEASE_SECONDS) / 4
    chunk_started = time.monotonic()
    tokens = 0
    for index, (delivery, message) in enumerate(ready):
        why = watch.current()
        if why:
            _unmark_sending([d for d, _ in ready[index:]], token)
            if why == "cancelled":
                for rest, _ in ready[index:]:
                    _end_claim(rest, token, Delivery.Status.SKIPPED, "campaign cancelled")
                    result.other += 1
                why = ""
            stopped = stopped or why
            break
        if not tokens:
            # Tokens for the rest of the chunk in one round trip where the rate allows
            # a block (ratelimit.BLOCK_SECONDS); at a low rate, one at a time.
            waited = time.monotonic() - chunk_started
            tokens = limiter.take(want=len(ready) - index, max_wait=max(0.0, wait_budget - waited))
            if not tokens:
                _unmark_sending([d for d, _ in ready[index:]], token)
                stopped = "rate limit wait too long"
                break
        tokens -= 1
        outcome = _send_one(campaign, delivery, token, connection, message)
        if outcome.sent:
            accepted.rows.append((delivery, outcome.note, outcome.provider_message_id))
        else:
            result.other += 1
        if outcome.stop:
            # A guard violation paused the campaign: nothing more leaves this worker.
            _unmark_sending([d for d, _ in ready[index + 1 :]], token)
            stopped = watch.fresh() or "guard"
            break
    return stopped


def _column(name: str) -> str:
    column = getattr(Delivery._meta.get_field(name), "column", None)
    assert isinstance(column, str), name
    return _q(column)


_DELIVERY = _q(Delivery._meta.db_table)
# The chunk's rows in one statement each, their per-row values as arrays: on PostgreSQL
# the ORM's CASE WHEN per row would cost more to compile than the database takes to run.
_MARK_SENDING_SQL = (
    f"UPDATE {_DELIVERY} AS d SET {_column('status')} = %s, "
    f"{_column('attempts')} = d.{_column('attempts')} + 1, {_column('message_id')} = v.mid, "
    f"{_column('lease_expires_at')} = %s, {_column('updated_at')} = %s "
    "FROM unnest(%s::bigint[], %s::text[]) AS v(id, mid) "
    f"WHERE d.{_column('id')} = v.id AND d.{_column('claim_token')} = %s "
    f"AND d.{_column('status')} = %s RETURNING d.{_column('id')}"
)
_MARK_SENT_SQL = (
    f"UPDATE {_DELIVERY} AS d SET {_column('status')} = %s, {_column('claim_token')} = NULL, "
    f"{_column('lease_expires_at')} = NULL, {_column('sent_at')} = %s, "
    f"{_column('updated_at')} = %s, {_column('last_error')} = v.note, "
    f"{_column('provider_message_id')} = v.pmid "
    "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, note, pmid) "
    f"WHERE d.{_column('id')} = v.id AND d.{_column('claim_token')} = %s "
    f"AND d.{_column('status')} = %s"
)


# Claim: the campaign's due rows in id order, locked with SKIP LOCKED so concurrent
# workers take disjoint rows without waiting, then claimed. The outer condition repeats
# the status: a row is only ever claimed from pending or retry_wait.
_CLAIM_SQL = (
    f"UPDATE {_DELIVERY} AS d SET {_column('status')} = %s, {_column('claim_token')} = %s, "
    f"{_column('lease_expires_at')} = %s "
    f"FROM (SELECT {_column('id')} FROM {_DELIVERY} WHERE {_column('campaign_id')} = %s "
    f"AND ({_column('status')} = %s OR ({_column('status')} = %s "
    f"AND {_column('next_attempt_at')} <= %s)) "
    f"ORDER BY {_column('id')} LIMIT %s FOR UPDATE SKIP LOCKED) AS due "
    f"WHERE d.{_column('id')} = due.{_column('id')} AND d.{_column('status')} IN (%s, %s) "
    f"RETURNING d.{_column('id')}"
)


def _set_based() -> bool:
    return db_connection.vendor == "postgresql"


def _execute(sql: str, params: list[Any]) -> tuple[list[tuple[Any, ...]], int]:
    """Run one statement; its returned rows (if any) and the number of rows it changed."""
    with db_connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description else []
        return rows, cursor.rowcount


class Accepted:
    """Deliveries the provider accepted whose `sent` mark is not written yet.

    It is written with the next chunk's `sending` mark (`_mark_sending`: on PostgreSQL
    both UPDATEs in one statement, so one commit), or by `record()` when the batch ends,
    however it ends. Until then the rows stay `sending`: a crash leaves them `unknown`,
    as it would have during their own sends, and only one chunk is ever `sending`.
    """

    def __init__(self, token: uuid.UUID, result: BatchResult) -> None:
        self.token = token
        self.result = result
        self.rows: list[tuple[Delivery, str, str]] = []

    def record(self) -> None:
        """Write the pending `sent` mark on its own."""
        if self.rows:
            _mark_sent(self.rows, self.token)
            self.recorded(len(self.rows))

    def recorded(self, count: int) -> None:
        self.result.sent += count
        self.rows = []


def _mark_sending(
    ready: list[tuple[Delivery, EmailMessage]],
    token: uuid.UUID,
    now: datetime,
    accepted: Accepted | None = None,
) -> list[tuple[Delivery, EmailMessage]]:
    """One fenced UPDATE: the chunk's claimed rows become `sending`. Returns those that did.

    With `accepted`, the previous chunk's accepted rows are recorded `sent` first, in the
    same statement on PostgreSQL (one round trip, one commit for both).
    """
    if not ready:
        return ready
    ids = [delivery.pk for delivery, _ in ready]
    message_ids = [str(message.extra_headers.get("Message-ID", "")) for _, message in ready]
    lease = now + timedelta(seconds=settings.CLAIM_LEASE_SECONDS)
    moved: set[int]
    if _set_based():
        params: list[Any] = [
            Delivery.Status.SENDING,
            lease,
            timezone.now(),
            ids,
            message_ids,
            token,
            Delivery.Status.CLAIMED,
        ]
        if accepted is not None and accepted.rows:
            sent_params = _mark_sent_params(accepted.rows, token)
            with db_connection.cursor() as cursor:
                # Two statements in one simple query: PostgreSQL runs them as one
                # transaction; the first result is the `sent` UPDATE's, the next ours.
                cursor.execute(f"{_MARK_SENT_SQL};\n{_MARK_SENDING_SQL}", [*sent_params, *params])
                _warn_unrecorded(len(accepted.rows), cursor.rowcount)
                cursor.cursor.nextset()
                rows = cursor.fetchall()
            accepted.recorded(len(accepted.rows))
        else:
            rows, _count = _execute(_MARK_SENDING_SQL, params)
        moved = {row[0] for row in rows}
    else:
        if accepted is not None:
            accepted.record()
        count = Delivery.objects.filter(
            pk__in=ids, claim_token=token, status=Delivery.Status.CLAIMED
        ).update(
            status=Delivery.Status.SENDING,
            attempts=F("attempts") + 1,
            message_id=Case(
                *[When(pk=pk, then=Value(mid)) for pk, mid in zip(ids, message_ids, strict=True)],
                default=F("message_id"),
            ),
            lease_expires_at=lease,
            updated_at=timezone.now(),
        )
        moved = (
            set(ids)
            if count == len(ids)
            else set(
                Delivery.objects.filter(
                    pk__in=ids, claim_token=token, status=Delivery.Status.SENDING
                ).values_list("id", flat=True)
            )
        )
    if len(moved) != len(ids):
        logger.warning(
            "%d of %d deliveries were no longer ours; left alone", len(ids) - len(moved), len(ids)
        )
        ready = [(d, m) for d, m in ready if d.pk in moved]
    for delivery, _ in ready:
        delivery.attempts += 1
    return ready


def _unmark_sending(deliveries: list[Delivery], token: uuid.UUID) -> None:
    """Rows marked `sending` that provably never went out (stopped first): claimed again."""
    if not deliveries:
        return
    Delivery.objects.filter(
        pk__in=[d.pk for d in deliveries], claim_token=token, status=Delivery.Status.SENDING
    ).update(status=Delivery.Status.CLAIMED, attempts=F("attempts") - 1, updated_at=timezone.now())
    for delivery in deliveries:
        delivery.attempts -= 1


@dataclass(frozen=True)
class SendOutcome:
    sent: bool
    note: str = ""
    provider_message_id: str = ""
    stop: bool = False


def _send_one(
    campaign: Campaign,
    delivery: Delivery,
    token: uuid.UUID,
    connection: BaseEmailBackend,
    message: EmailMessage,
) -> SendOutcome:
    """Hand one message (already `sending`) to the guarded backend; classify what happened."""
    try:
        # No transaction is open here: the network call never holds locks.
        connection.send_messages([message])
    except GuardViolation as violation:
        if violation.sent:
            # The provider accepted it and then reported other recipients: record it as
            # sent (it is), and stop the campaign for people to look.
            pause_for_guard(campaign.pk, violation, delivery.pk)
            return SendOutcome(
                True, note=f"guard ({violation.layer}): {violation.reason}", stop=True
            )
        _block(campaign, delivery, token, Delivery.Status.SENDING, violation)
        return SendOutcome(False, stop=True)
    except Exception as exc:  # classified below: retry, fail, or unknown; never a blind retry
        _record_outcome(delivery, token, classify_failure(exc), timezone.now())
        return SendOutcome(False)
    status = getattr(message, "anymail_status", None)
    return SendOutcome(True, provider_message_id=str(getattr(status, "message_id", "") or ""))


def _sent_values(sent: list[tuple[Delivery, str, str]]) -> tuple[list[int], list[str], list[str]]:
    """The accepted rows' ids, notes and provider ids, each cut to its column."""
    return (
        [delivery.pk for delivery, _, _ in sent],
        [note[:1000] for _, note, _ in sent],
        [provider_id[:255] for _, _, provider_id in sent],
    )


def _mark_sent_params(sent: list[tuple[Delivery, str, str]], token: uuid.UUID) -> list[Any]:
    """The parameters of `_MARK_SENT_SQL` for these accepted rows."""
    now = timezone.now()
    ids, notes, provider_ids = _sent_values(sent)
    return [
        Delivery.Status.SENT,
        now,
        now,
        ids,
        notes,
        provider_ids,
        token,
        Delivery.Status.SENDING,
    ]


def _warn_unrecorded(expected: int, count: int) -> None:
    if count != expected:
        logger.warning(
            "%d of %d sent deliveries were no longer ours to record", expected - count, expected
        )


def _mark_sent(sent: list[tuple[Delivery, str, str]], token: uuid.UUID) -> None:
    """The provider accepted these: `sending` -> `sent`, one UPDATE fenced on our claim."""
    if not sent:
        return
    if _set_based():
        _rows, count = _execute(_MARK_SENT_SQL, _mark_sent_params(sent, token))
    else:
        ids, notes, provider_ids = _sent_values(sent)
        now = timezone.now()
        changes: dict[str, Any] = {
            "status": Delivery.Status.SENT,
            "claim_token": None,
            "lease_expires_at": None,
            "sent_at": now,
            "updated_at": now,
        }
        for field, values in (("last_error", notes), ("provider_message_id", provider_ids)):
            if any(values):
                changes[field] = Case(
                    *[When(pk=pk, then=Value(v)) for pk, v in zip(ids, values, strict=True)],
                    default=Value(""),
                )
            else:
                changes[field] = ""
        count = Delivery.objects.filter(
            pk__in=ids, claim_token=token, status=Delivery.Status.SENDING
        ).update(**changes)
    _warn_unrecorded(len(sent), count)


def _block(
    campaign: Campaign,
    delivery: Delivery,
    token: uuid.UUID,
    expected: str,
    violation: GuardViolation,
) -> None:
    _fenced(
        delivery.pk,
        token,
        expected,
        status=Delivery.Status.BLOCKED,
        claim_token=None,
        last_error=f"guard ({violation.layer}): {violation.reason}"[:1000],
    )
    record_audit(
        "delivery.blocked",
        obj=delivery,
        data={"layer": violation.layer, "reason": violation.reason, "campaign_id": campaign.pk},
    )
    pause_for_guard(campaign.pk, violation, delivery.pk)


def complete_if_done(campaign_id: int) -> bool:
    """`sending` -> `sent` once no delivery is pending, claimed, sending or waiting to retry."""
    if Delivery.objects.filter(campaign_id=campaign_id, status__in=Delivery.OPEN_STATUSES).exists():
        return False
    return transition_if(campaign_id, "complete", data=delivery_summary(campaign_id))


def delivery_summary(campaign_id: int) -> dict[str, int]:
    """How many deliveries of the campaign are in each status (absent: none)."""
    rows = (
        Delivery.objects.filter(campaign_id=campaign_id)
        .values_list("status")
        .annotate(n=Count("id"))
    )
    return {status: n for status, n in rows}


# --- The sweeper ------------------------------------------------------------------------------


@dataclass
class SweepResult:
    reclaimed: int = 0
    unknown: int = 0
    settled: int = 0
    redispatched: int = 0
    launched: int = 0
    completed: int = 0


def sweep(now: datetime | None = None) -> SweepResult:
    """Repair what crashes and lost broker messages leave behind. Safe to run anywhere, any time."""
    now = now or timezone.now()
    result = SweepResult()
    # Claimed but never sent: the worker died or was stopped before the network call.
    result.reclaimed = Delivery.objects.filter(
        status=Delivery.Status.CLAIMED, lease_expires_at__lt=now
    ).update(
        status=Delivery.Status.PENDING, claim_token=None, lease_expires_at=None, updated_at=now
    )
    # Marked sending and the lease ran out: the message may or may not have left.
    expired = list(
        Delivery.objects.filter(
            status=Delivery.Status.SENDING, lease_expires_at__lt=now
        ).values_list("id", flat=True)
    )
    for delivery_id in expired:
        with transaction.atomic():
            if Delivery.objects.filter(
                pk=delivery_id, status=Delivery.Status.SENDING, lease_expires_at__lt=now
            ).update(
                status=Delivery.Status.UNKNOWN,
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
                last_error="the worker stopped while sending; the provider may or may not have it",
            ):
                result.unknown += 1
                record_audit(
                    "delivery.unknown",
                    obj=Delivery(pk=delivery_id),
                    data={"reason": "lease expired while sending"},
                )
    result.settled = settle_unknown_from_events()
    result.launched = launch_scheduled(now)
    for campaign_id in Campaign.objects.filter(status=Campaign.Status.SENDING).values_list(
        "id", flat=True
    ):
        if complete_if_done(campaign_id):
            result.completed += 1
            continue
        live = Delivery.objects.filter(
            campaign_id=campaign_id,
            status__in=[Delivery.Status.CLAIMED, Delivery.Status.SENDING],
            lease_expires_at__gte=now,
        ).exists()
        due = Delivery.objects.filter(_due(campaign_id, now)).exists()
        if due and not live and not SendingSwitch.is_halted():
            # Work is due and nobody holds it: the broker lost our message (or never had it).
            with transaction.atomic():
                dispatch_on_commit(campaign_id)
            result.redispatched += 1
    return result


def settle_unknown_from_events() -> int:
    """An `unknown` delivery the provider later reports on was, in fact, accepted."""
    settled = 0
    unknown = Delivery.objects.filter(status=Delivery.Status.UNKNOWN).exclude(message_id="")
    for delivery in unknown.iterator(chunk_size=500):
        event = (
            ProviderEvent.objects.filter(
                Q(delivery=delivery) | Q(message_id=delivery.message_id.strip("<>"))
            )
            .order_by("-received_at")
            .first()
        )
        if event is None:
            continue
        new_status = {
            "delivered": Delivery.Status.DELIVERED,
            "bounced": Delivery.Status.BOUNCED,
            "complained": Delivery.Status.COMPLAINED,
        }.get(event.event_type, Delivery.Status.SENT)
        with transaction.atomic():
            if Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.UNKNOWN).update(
                status=new_status,
                updated_at=timezone.now(),
                last_error=f"settled by provider event {event.event_id}",
            ):
                settled += 1
                record_audit(
                    "delivery.settled",
                    obj=delivery,
                    data={"event": event.event_id, "status": new_status},
                )
    return settled
