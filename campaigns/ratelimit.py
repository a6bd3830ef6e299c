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

# Refill by elapsed time, take up to `want` whole tokens if there is one; otherwise say how
# long to wait. Runs atomically inside Redis, so any number of workers share one bucket
# without races. Answers "<granted> <wait>" (a Lua number would come back truncated).
_REDIS_TAKE = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
-- (A millionth of a token of tolerance: a refill to exactly one may come out a rounding short.)
local granted = math.min(want, math.floor(tokens + 1e-6))
local wait = 0
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('EXPIRE', key, 3600)
return tostring(granted) .. ' ' .. tostring(wait)
"""

# Tokens are taken in blocks of at most what the rate grants in this long: at 20/s one
# at a time (exactly as before); with a high limit, up to a chunk at once, one round
# trip instead of one per message. A block's messages go out right after it is taken,
# so any window sees at most this much more of the rate than the bucket itself allows.
BLOCK_SECONDS = 0.01


class RateLimiter(Protocol):
    def try_take(self) -> float:
        """Take one token now (return 0.0) or return the seconds to wait before trying again."""

    def take(
        self,
        *,
        want: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 60.0,
    ) -> int: ...


class _Bucket:
    def __init__(self, key: str, *, rate: float, burst: int, clock: Clock = time.time) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = key
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock

    @property
    def block(self) -> int:
        """The most tokens one `take` may grant: what the rate gives in BLOCK_SECONDS."""
        return max(1, min(self.burst, int(self.rate * BLOCK_SECONDS)))

    def try_take_up_to(self, want: int) -> tuple[int, float]:
        """Take between 1 and `want` tokens now: (taken, 0.0); or (0, seconds to wait)."""
        raise NotImplementedError

    def try_take(self) -> float:
        return self.try_take_up_to(1)[1]

    def take(
        self,
        *,
        want: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 60.0,
    ) -> int:
        """Block until tokens are taken (how many: 1 to `want`, at most `block`), or return
        0 once `max_wait` seconds of waiting would be exceeded."""
        want = max(1, min(want, self.block))
        waited = 0.0
        while True:
            taken, wait = self.try_take_up_to(want)
            if taken:
                return taken
            if waited + wait > max_wait:
                return 0
            sleep(wait)
            waited += wait


class RedisBucket(_Bucket):
    def __init__(
        self, key: str, *, url: str, rate: float, burst: int, clock: Clock = time.time
    ) -> None:
        super().__init__(key, rate=rate, burst=burst, clock=clock)
        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(_REDIS_TAKE)

    def try_take_up_to(self, want: int) -> tuple[int, float]:
        answer = self.script(keys=[self.key], args=[self.rate, self.burst, self.clock(), want])
        granted, wait = (answer.decode() if isinstance(answer, bytes) else str(answer)).split()
        return int(granted), float(wait)


class DatabaseBucket(_Bucket):
    def try_take_up_to(self, want: int) -> tuple[int, float]:
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
            taken, wait = min(want, int(tokens + 1e-6)), 0.0  # see _REDIS_TAKE
            if taken >= 1:
                tokens -= taken
            else:
                taken, wait = 0, (1 - tokens) / self.rate
            bucket.tokens = tokens
            bucket.save(update_fields=["tokens", "updated_at"])
        return taken, wait


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
