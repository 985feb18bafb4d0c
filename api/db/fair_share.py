"""A fair share of a worker's connections: no user holds more than a few of them at once.

Without it one user's slow requests (long searches, rows locked elsewhere) could take every
connection of the pool, and every other user would wait behind them. With it, that user's further
requests wait for one of their own connections to come back, and are refused (UserShareExceeded, a
429) when none has by the request's deadline, while everyone else is served from the rest of the pool.

The wait for a slot is part of the request's one wait for a connection, DB_POOL_TIMEOUT_SECONDS in all
(`Database.run` passes its deadline): a request that waited here for its share waits for the pool only
as long as is left. A share full of requests that are themselves still waiting for a connection, not
holding one at the database, while the pool has none to give (the database is down, or every
connection is busy), is the database's doing: the user did nothing wrong, and the request is the 503
theirs will be (`DatabaseUnavailable`), not a 429 telling them to slow down.
"""

import asyncio
import time
from collections.abc import Callable

from api.db.errors import DatabaseBusy, DatabaseUnavailable, UserShareExceeded


class Share:
    """One user's slots; `Database` counts in `at_database` those of its requests holding a connection."""

    __slots__ = ("at_database", "holders", "slots")

    def __init__(self, per_user: int) -> None:
        self.slots = asyncio.Semaphore(per_user)
        self.holders = 0  # requests holding or waiting for a slot; the share is dropped at 0
        self.at_database = 0  # requests holding a slot and a pooled connection


class FairShare:
    def __init__(self, per_user: int, *, pool_has_idle_connection: Callable[[], bool]) -> None:
        self.per_user = per_user
        self._pool_has_idle_connection = pool_has_idle_connection
        self._shares: dict[str, Share] = {}

    async def acquire(self, user_id: str, deadline: float) -> Share:
        """Take one of the user's slots by `deadline` (a `time.monotonic()`); their share, to count
        the connections its requests hold."""
        share = self._shares.get(user_id)
        if share is None:
            share = self._shares[user_id] = Share(self.per_user)
        share.holders += 1
        if not share.slots.locked():
            await share.slots.acquire()  # free: returns at once
            return share
        try:
            await asyncio.wait_for(share.slots.acquire(), deadline - time.monotonic())
        except TimeoutError:
            self._leave(user_id, share)
            # Some of the slots are held by requests still waiting for a connection, and the pool has
            # none for them either: the database's doing, not the user's. A slot on its way from one
            # of the user's requests to the next, which is still being lent its connection (a
            # liveness check's round trip), is no such wait: the pool has idle connections then.
            if share.at_database < self.per_user and not self._pool_has_idle_connection():
                if self.at_database:  # requests hold the connections: a busy pool, not an outage
                    raise DatabaseBusy("no connection for this user's requests in time") from None
                raise DatabaseUnavailable("no connection for this user's requests in time") from None
            raise UserShareExceeded(self.per_user) from None
        except BaseException:
            self._leave(user_id, share)
            raise
        return share

    def release(self, user_id: str) -> None:
        share = self._shares[user_id]
        share.slots.release()
        self._leave(user_id, share)

    def _leave(self, user_id: str, share: Share) -> None:
        share.holders -= 1
        if share.holders == 0:
            del self._shares[user_id]

    @property
    def at_database(self) -> int:
        """Requests holding a pooled connection right now, whoever they are for."""
        return sum(share.at_database for share in self._shares.values())

    @property
    def waiting(self) -> int:
        """Requests waiting for their user's share right now."""
        return sum(max(0, share.holders - self.per_user) for share in self._shares.values())
