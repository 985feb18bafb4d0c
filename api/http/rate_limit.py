"""A request rate per user, per worker: a token bucket of RATE_LIMIT_PER_MINUTE requests.

Each user's bucket holds a minute's worth of requests and refills evenly; a request with no token
left is refused with 429, `Retry-After` and the IETF draft's `RateLimit-Policy` and `RateLimit`
fields (draft-ietf-httpapi-ratelimit-headers). The limit is per worker process: with W workers and
H hosts a user may make up to W x H times as many requests, so the cluster-wide limit belongs at
the edge (a load balancer's or gateway's limiter); this one keeps one user from taking a worker.
"""

import math
import time
from collections.abc import Callable

from api.http.problems import too_many_requests

_POLICY = "per-user"
# Buckets idle this long are full again, so forgetting them changes nothing; they are pruned once
# the table grows past this many users.
_IDLE_SECONDS = 60.0
_PRUNE_ABOVE = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # user id -> [tokens, when last counted]
        self.policy = f'"{_POLICY}";q={per_minute};w=60'

    def take(self, user_id: str) -> None:
        """Spend one of the user's tokens, or refuse the request with a 429."""
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._prune(now)
            bucket = self._buckets[user_id] = [float(self.per_minute), now]
        tokens = min(float(self.per_minute), bucket[0] + (now - bucket[1]) * self._per_second)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return
        bucket[0] = tokens
        wait = max(1, math.ceil((1.0 - tokens) / self._per_second))
        raise too_many_requests(
            f"You may make {self.per_minute} requests a minute; try again in {wait} s.",
            retry_after=wait,
            headers={"RateLimit-Policy": self.policy, "RateLimit": f'"{_POLICY}";r=0;t={wait}'},
        )

    def _prune(self, now: float) -> None:
        idle = [user for user, (_, seen) in self._buckets.items() if now - seen >= _IDLE_SECONDS]
        for user in idle:
            del self._buckets[user]
