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
# Buckets idle this long are full again, so forgetting them changes nothing.
_IDLE_SECONDS = 60.0


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._per_second = per_minute / 60.0
        self._clock = clock
        # user id -> [tokens, when last counted], least recently counted first: the idle ones are
        # found at the front, so forgetting them never scans the users still active.
        self._buckets: dict[str, list[float]] = {}
        self.policy = f'"{_POLICY}";q={per_minute};w=60'

    def take(self, user_id: str) -> None:
        """Spend one of the user's tokens, or refuse the request with a 429."""
        now = self._clock()
        bucket = self._buckets.pop(user_id, None)
        if bucket is None:
            self._forget_idle(now)
            bucket = [float(self.per_minute), now]
        self._buckets[user_id] = bucket
        tokens = min(float(self.per_minute), bucket[0] + (now - bucket[1]) * self._per_second)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return
        bucket[0] = tokens
        wait = max(1, math.ceil((1.0 - tokens) / self._per_second))
        raise too_many_requests(
            # Said as it is counted: a client told "a minute" alone took it for the whole API's limit.
            f"This server process takes {self.per_minute} requests a minute from each user "
            f"(RATE_LIMIT_PER_MINUTE); try again in {wait} s.",
            retry_after=wait,
            headers={"RateLimit-Policy": self.policy, "RateLimit": f'"{_POLICY}";r=0;t={wait}'},
        )

    def users_kept(self) -> int:
        """How many users' buckets this worker holds: those counted within the last minute, and those
        idle longer until the next new user's request forgets them; never every user ever seen."""
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets idle past `_IDLE_SECONDS`, from the front, stopping at the first that is not."""
        idle = []
        for user, (_, seen) in self._buckets.items():
            if now - seen < _IDLE_SECONDS:
                break
            idle.append(user)
        for user in idle:
            del self._buckets[user]
