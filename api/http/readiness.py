"""Whether the database answers, for /readyz: one ping shared by every caller of a worker."""

import asyncio
import logging
import math
import time

from api.db.database import Database
from api.db.errors import UNAVAILABLE, WritesRefused, in_one_line

logger = logging.getLogger(__name__)

_READY_TIMEOUT_SECONDS = 3.0
# /readyz needs no token, so anyone can call it as often as they like: the database hears from it
# at most this often per worker, however many call.
READY_MAX_AGE_SECONDS = 1.0
_UNREACHABLE: tuple[type[Exception], ...] = (TimeoutError, *UNAVAILABLE)
# While the database stays not ready for the same reason, the log says so again this often.
_NOT_READY_REPEATED_EVERY_SECONDS = 60.0


class SharedReadiness:
    """Whether the database answers, asked at most once per `max_age_seconds` in this worker.

    Callers while a check is in flight wait for that check; callers after it take its result until
    it is `max_age_seconds` old (counted from when it started, so checks never start more often).
    """

    def __init__(
        self,
        database: Database,
        *,
        max_age_seconds: float = READY_MAX_AGE_SECONDS,
        timeout_seconds: float = _READY_TIMEOUT_SECONDS,
    ) -> None:
        self._database = database
        self._max_age_seconds = max_age_seconds
        self._timeout_seconds = timeout_seconds
        self._started_at = -math.inf
        self._check: asyncio.Task[bool] | None = None
        self._pinging: asyncio.Task[None] | None = None
        # Why the last check found the database not ready, and when the log last said so; None
        # while it is ready (`_say`).
        self._not_ready: str | None = None
        self._said_at = -math.inf
        # Whether the last check found the database answering but refusing writes: /readyz says so,
        # rather than that it cannot be reached.
        self.refuses_writes = False

    async def reachable(self) -> bool:
        now = time.monotonic()
        if self._check is None or (self._check.done() and now - self._started_at >= self._max_age_seconds):
            self._started_at = now
            self._check = asyncio.create_task(self._ping(), name="readiness-check")
        # Shielded: a caller that hangs up must not cancel the check the others wait for.
        return await asyncio.shield(self._check)

    async def _ping(self) -> bool:
        # Waited for, not cancelled at the timeout: psycopg answers a cancelled wait by asking the
        # server to cancel, and a silent server would hold the answer for that too. The ping ends
        # by its own bounds (api/db/database.py); the next check waits for it rather than start another.
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.create_task(self._database.ping(), name="readiness-ping")
            # Its error is read here when it ends in time; when it ends later, by nobody else.
            self._pinging.add_done_callback(lambda ping: ping.cancelled() or ping.exception())
        done, _ = await asyncio.wait({self._pinging}, timeout=self._timeout_seconds)
        error = self._pinging.exception() if done else TimeoutError()
        self.refuses_writes = isinstance(error, WritesRefused)
        if error is None:
            self._say(None)
            return True
        if not isinstance(error, _UNREACHABLE):
            raise error
        why = "the database did not answer in time" if isinstance(error, TimeoutError) else in_one_line(error)
        self._say(why)
        return False

    def _say(self, not_ready: str | None) -> None:
        """Log why the database is not ready when that changes, and again once a minute while it
        lasts; and that it is ready again. A load balancer asks every few seconds, and a line for each
        check filled the log of a long outage with the same words."""
        now = time.monotonic()
        if not_ready is None:
            if self._not_ready is not None:
                logger.info("readiness: the database is ready again")
        elif not_ready != self._not_ready or now - self._said_at >= _NOT_READY_REPEATED_EVERY_SECONDS:
            logger.warning("readiness: the database is not ready: %s", not_ready)
            self._said_at = now
        self._not_ready = not_ready
