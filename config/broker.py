"""The kombu transports Countersign runs on, picked by ``CELERY_BROKER_URL``'s scheme.

config/celery.py registers them with kombu as ``sqlite`` and ``redis``.

- ``SQLiteTransport``: the embedded broker, kombu's SQLAlchemy transport on one SQLite file
  beside the database. Every put and get is a transaction, so no reader ever sees half a
  message, and a get runs under ``BEGIN IMMEDIATE`` (kombu does that on SQLite), so two
  consumers never take the same row. It replaces kombu's file-system transport, which
  hands a consumer a file another process is still writing (kombu #1551; issue 12).
- ``RedisTransport``: production, kombu's Redis transport as it is.

Both drop a message they cannot decode instead of dying of it. Kombu turns the raw message
into a dict inside the consumer's event loop; an exception there is not a connection
error, so Celery stops the whole worker ("Unrecoverable error", celery #7975) and with it
every delivery in flight. A message that is not a kombu envelope carries nothing we could
use anyway: the database is the source of truth, and the sweeper re-dispatches due work
that no broker message carries. So it is logged and dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError

logger = logging.getLogger(__name__)

# What kombu's decoding of a raw message raises: text that is not JSON, bytes that are
# not UTF-8. Nothing else is caught: any other error is not about the message.
UNDECODABLE = (json.JSONDecodeError, UnicodeDecodeError)

# SQLite waits this long for another process's write lock before giving up.
BUSY_TIMEOUT_SECONDS = 30.0
# Kombu's SQLAlchemy transport marks a consumed message invisible and keeps its row
# forever; an idle consumer deletes such rows at most this often.
FORGET_CONSUMED_EVERY_SECONDS = 60.0


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` cannot become a kombu message, or None if it can.

    Checks exactly what kombu's virtual ``Message`` reads before Celery sees the message;
    the body itself (its content type and serializer) is Celery's to judge, and Celery
    already logs and drops a body it cannot decode.
    """
    if not isinstance(payload, dict):
        return f"the message is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the message has no 'properties' object"
    if "delivery_tag" not in properties:
        return "the message has no delivery tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "the message's 'delivery_info' is not an object"
    if not isinstance(payload.get("headers") or {}, dict):
        return "the message's 'headers' is not an object"
    body = payload.get("body")
    encoding = properties.get("body_encoding")
    if body and encoding not in (None, "base64"):
        return f"the message body has an unknown encoding {encoding!r}"
    if body and encoding == "base64":
        try:
            base64.b64decode(body)
        except (binascii.Error, TypeError, ValueError):
            return "the message body is not valid base64"
    return None


def log_dropped(queue: str, why: object) -> None:
    logger.error(
        "Dropped a message from queue %r that cannot be decoded (%s). Nothing is lost: "
        "the database holds the work, and the sweeper re-dispatches what is due.",
        queue,
        why,
    )


class DropsUndecodableMessages:
    """Mixin for a kombu virtual ``Transport``: a decoded payload that is not a kombu
    envelope is logged and dropped before kombu builds a message from it."""

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log_dropped(str(queue), problem)
            return
        super()._deliver(message, queue)  # type: ignore[misc]


# --- the embedded broker: SQLite through kombu's SQLAlchemy transport -----------------------


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # WAL: producers and consumers read while one of them writes, and a commit never waits
    # for readers. NORMAL is durable enough in WAL mode: a power cut may lose the last
    # messages, never corrupt the file, and the sweeper re-dispatches what was lost.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
        # WAL stays set in the file. Switching needs the file to itself, and SQLite says
        # "locked" at once, without its busy wait, while another process opens the new
        # file too: whoever loses waits a moment and looks again.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        cursor.close()


class SQLiteChannel(kombu_sqla.Channel):
    _last_forget = 0.0

    def _open(self) -> Any:
        # Kombu creates its tables when a process first opens the file, checking first
        # and creating after. Web, worker and beat starting together on a new file race
        # there, and the loser gets "table ... already exists": it looks again.
        for attempt in range(5):
            try:
                return super()._open()
            except OperationalError as exc:
                if "already exists" not in str(exc) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _get_or_create(self, queue: str) -> Any:
        # The same race one step later: two processes declare a new queue at once, and
        # the second insert of its row breaks the unique name. That row is the one wanted.
        try:
            return super()._get_or_create(queue)  # type: ignore[misc]
        except IntegrityError:
            self.session.rollback()
            return super()._get_or_create(queue)  # type: ignore[misc]

    def _engine_from_config(self) -> Engine:
        # Kombu passes every transport option to create_engine, so Celery's own options
        # (polling_interval, ...) would break it: this engine takes none of them.
        client = self.connection.client
        assert client is not None, "a channel always belongs to a connection"
        url = make_url(str(client.hostname))
        if url.database and url.database != ":memory:":
            # The broker makes its own folder when it first connects: nothing needs to
            # exist before (importing settings creates no folders).
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        # Kombu's get takes the file's write lock (BEGIN IMMEDIATE) even to find the queue
        # empty. Idle workers poll often, so look first without a lock: in WAL mode a
        # reader neither waits for nor delays anyone.
        if not self._has_visible(queue):
            self._forget_consumed()
            raise Empty()
        try:
            payload = super()._get(queue)
        except Empty:
            self._forget_consumed()
            raise
        except UNDECODABLE as exc:
            # kombu commits the row as consumed before it decodes: it is gone already.
            log_dropped(queue, repr(exc))
            raise Empty() from exc
        return payload

    def _has_visible(self, queue: str) -> bool:
        queue_id = self._get_or_create(queue).id
        found = (
            self.session.query(self.message_cls.id)
            .filter(self.message_cls.queue_id == queue_id, self.message_cls.visible.is_(True))
            .limit(1)
            .first()
        )
        # Ends the read at once, so this connection holds no snapshot between polls.
        self.session.commit()
        return found is not None

    def _forget_consumed(self) -> None:
        """Delete consumed rows, at most once a minute, when the queue is idle.

        Nothing reads a consumed row again: a message that must go out once more (an
        unacknowledged one when its worker stops) is published anew from memory.
        """
        now = time.monotonic()
        if now - self._last_forget < FORGET_CONSUMED_EVERY_SECONDS:
            return
        self._last_forget = now
        table = self.message_cls.__table__.name
        self.session.execute(text(f"DELETE FROM {table} WHERE visible = 0"))
        self.session.commit()


class SQLiteTransport(DropsUndecodableMessages, kombu_sqla.Transport):
    Channel = SQLiteChannel


def _forget_inherited_connections() -> None:
    # SQLite connections must not cross fork(): a prefork pool child that published
    # through its parent's pooled connection could corrupt the lock state of the file.
    # The child drops them unclosed (they are the parent's) and opens its own.
    for engine, _session_factory in kombu_sqla.Channel._engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


# --- production: Redis ----------------------------------------------------------------------


class RedisChannel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        # Kombu pops the message, then decodes it: by the time decoding fails the message
        # is off the queue, and kombu's poller state is already reset (its `finally`).
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except UNDECODABLE as exc:
            log_dropped("(redis)", repr(exc))
            return True


class RedisTransport(DropsUndecodableMessages, kombu_redis.Transport):
    Channel = RedisChannel
