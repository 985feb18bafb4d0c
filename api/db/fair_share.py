"""A fair share of a worker's connections: no user holds more than a few of them at once.

Without it one user's slow requests (long searches, rows locked elsewhere) could take every
connection of the pool, and every other user would wait behind them. With it, that user's further
requests wait for one of their own connections to come back, up to the pool timeout, and then are
refused (UserShareExceeded, a 429), while everyone else is served from the rest of the pool.
"""

import asyncio

from api.db.errors import UserShareExceeded


class _Share:
    __slots__ = ("holders", "slots")

    def __init__(self, per_user: int) -> None:
        self.slots = asyncio.Semaphore(per_user)
        self.holders = 0  # requests holding or waiting for a slot; the share is dropped at 0


class FairShare:
    def __init__(self, per_user: int, *, wait_seconds: float) -> None:
        self.per_user = per_user
        self._wait_seconds = wait_seconds
        self._shares: dict[str, _Share] = {}

    async def acquire(self, user_id: str) -> None:
        share = self._shares.get(user_id)
        if share is None:
            share = self._shares[user_id] = _Share(self.per_user)
        share.holders += 1
        if not share.slots.locked():
            await share.slots.acquire()  # free: returns at once
            return
        try:
            await asyncio.wait_for(share.slots.acquire(), self._wait_seconds)
        except TimeoutError:
            self._leave(user_id, share)
            raise UserShareExceeded(self.per_user) from None
        except BaseException:
            self._leave(user_id, share)
            raise

    def release(self, user_id: str) -> None:
        share = self._shares[user_id]
        share.slots.release()
        self._leave(user_id, share)

    def _leave(self, user_id: str, share: _Share) -> None:
        share.holders -= 1
        if share.holders == 0:
            del self._shares[user_id]

    @property
    def waiting(self) -> int:
        """Requests waiting for their user's share right now."""
        return sum(max(0, share.holders - self.per_user) for share in self._shares.values())
