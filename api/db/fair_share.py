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

A search (`Query.one_at_a_time`) also takes the user's one search turn, before a slot, within the same
deadline: however large the share, one user's searches run one at a time in a worker, each holding at
most one database core for as long as DB_STATEMENT_TIMEOUT_MS lets it, while the rest of the share
serves their other requests. A search waiting for its turn holds no slot and no connection; one that
does not get it by the deadline is refused (`SearchUnderway`, a 429). Without the turn, one user's
costliest searches took a database core for each connection of her share, and other users' throughput
fell with each (`python -m bench.search_neighbour` measures it).
"""

import asyncio
import time
from collections.abc import Callable

from api.db.errors import DatabaseBusy, DatabaseUnavailable, SearchUnderway, UserShareExceeded


class Share:
    """One user's slots; `Database` counts in `at_database` those of its requests holding a connection."""

    __slots__ = ("at_database", "holders", "search_turn", "slots", "waiting_for_turn")

    def __init__(self, per_user: int) -> None:
        self.slots = asyncio.Semaphore(per_user)
        self.holders = 0  # requests holding or waiting for a slot or the turn; the share is dropped at 0
        self.at_database = 0  # requests holding a slot and a pooled connection
        # Made by the user's first search, so that other requests make nothing more.
        self.search_turn: asyncio.Lock | None = None
        self.waiting_for_turn = 0  # searches waiting for the turn, not yet for a slot


class FairShare:
    def __init__(self, per_user: int, *, pool_has_idle_connection: Callable[[], bool]) -> None:
        self.per_user = per_user
        self._pool_has_idle_connection = pool_has_idle_connection
        self._shares: dict[str, Share] = {}

    async def acquire(self, user_id: str, deadline: float, *, one_at_a_time: bool = False) -> Share:
        """Take one of the user's slots by `deadline` (a `time.monotonic()`), and first their search
        turn when `one_at_a_time`; their share, to count the connections its requests hold. Give both
        back with `release`, with the same `one_at_a_time`."""
        share = self._shares.get(user_id)
        if share is None:
            share = self._shares[user_id] = Share(self.per_user)
        share.holders += 1
        if one_at_a_time:
            await self._take_turn(user_id, share, deadline)
        if not share.slots.locked():
            await share.slots.acquire()  # free: returns at once
            return share
        try:
            await asyncio.wait_for(share.slots.acquire(), deadline - time.monotonic())
        except TimeoutError:
            if one_at_a_time:
                self._give_turn_back(share)
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
            if one_at_a_time:
                self._give_turn_back(share)
            self._leave(user_id, share)
            raise
        return share

    async def _take_turn(self, user_id: str, share: Share, deadline: float) -> None:
        turn = share.search_turn
        if turn is None:
            turn = share.search_turn = asyncio.Lock()
        share.waiting_for_turn += 1
        try:
            # The turn's holder came first, with an earlier deadline: by ours it has had its connection,
            # so a wait that runs out is her own search's doing (a 429), never the pool's (a 503).
            await asyncio.wait_for(turn.acquire(), deadline - time.monotonic())
        except TimeoutError:
            self._leave(user_id, share)
            raise SearchUnderway() from None
        except BaseException:
            self._leave(user_id, share)
            raise
        finally:
            share.waiting_for_turn -= 1

    @staticmethod
    def _give_turn_back(share: Share) -> None:
        assert share.search_turn is not None, "a search gives back the turn it took"
        share.search_turn.release()

    def release(self, user_id: str, *, one_at_a_time: bool = False) -> None:
        share = self._shares[user_id]
        share.slots.release()
        if one_at_a_time:
            self._give_turn_back(share)
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
        """Requests waiting for their user's share (or search turn) right now."""
        return sum(
            share.waiting_for_turn + max(0, share.holders - share.waiting_for_turn - self.per_user)
            for share in self._shares.values()
        )
