"""A token bucket shared by every worker: Redis when REDIS_URL is set, the database otherwise.

The clock is a parameter so tests can drive time by hand; production uses time.time().
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

import redis
from django.conf import settings
from django.db import transaction

from .models import RateBucket

Clock = Callable[[], float]

# Refill by elapsed time, take one token if there is one; otherwise say how long to wait.
# Runs atomically inside Redis, so any number of workers share one bucket without races.
_REDIS_TAKE = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('EXPIRE', key, 3600)
return tostring(wait)
"""


class RateLimiter(Protocol):
    def try_take(self) -> float:
        """Take one token now (return 0.0) or return the seconds to wait before trying again."""

    def take(
        self, *, sleep: Callable[[float], None] = time.sleep, max_wait: float = 60.0
    ) -> bool: ...


class _Bucket:
    def __init__(self, key: str, *, rate: float, burst: int, clock: Clock = time.time) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock

    def try_take(self) -> float:
        raise NotImplementedError

    def take(self, *, sleep: Callable[[float], None] = time.sleep, max_wait: float = 60.0) -> bool:
        """Block until a token is taken (True) or `max_wait` seconds of waiting pass (False)."""
        waited = 0.0
        while True:
            wait = self.try_take()
            if wait <= 0:
                return True
            if waited + wait > max_wait:
                return False
            sleep(wait)
            waited += wait


class RedisBucket(_Bucket):
    def __init__(
        self, key: str, *, url: str, rate: float, burst: int, clock: Clock = time.time
    ) -> None:
        super().__init__(key, rate=rate, burst=burst, clock=clock)
        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(_REDIS_TAKE)

    def try_take(self) -> float:
        return float(self.script(keys=[self.key], args=[self.rate, self.burst, self.clock()]))


class DatabaseBucket(_Bucket):
    def try_take(self) -> float:
        now = self.clock()
        with transaction.atomic():
            bucket, _ = RateBucket.objects.get_or_create(
                key=self.key, defaults={"tokens": float(self.burst), "updated_at": now}
            )
            bucket = RateBucket.objects.select_for_update().get(pk=bucket.pk)
            tokens = bucket.tokens
            if now > bucket.updated_at:
                tokens = min(float(self.burst), tokens + (now - bucket.updated_at) * self.rate)
                bucket.updated_at = now
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            bucket.tokens = tokens
            bucket.save(update_fields=["tokens", "updated_at"])
        return wait


def transport_account_key() -> str:
    """One bucket per transport account: the provider credentials or SMTP host decide."""
    anymail = getattr(settings, "ANYMAIL", {}) or {}
    account = "|".join(
        [
            settings.EMAIL_TRANSPORT,
            settings.EMAIL_HOST,
            str(settings.EMAIL_PORT),
            settings.EMAIL_HOST_USER,
            *(
                str(v)
                for k, v in sorted(anymail.items())
                if k.endswith(("TOKEN", "API_KEY", "USERNAME"))
            ),
        ]
    )
    return "countersign:rate:" + hashlib.sha256(account.encode()).hexdigest()[:16]


def shared_limiter(clock: Clock = time.time) -> _Bucket:
    rate = float(settings.SEND_RATE_PER_SECOND)
    burst = int(settings.SEND_BURST)
    key = transport_account_key()
    if settings.REDIS_URL:
        return RedisBucket(key, url=settings.REDIS_URL, rate=rate, burst=burst, clock=clock)
    return DatabaseBucket(key, rate=rate, burst=burst, clock=clock)
