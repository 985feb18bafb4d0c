"""Which callers' user rows this worker knows to be stored as their tokens describe them.

A write can bring the caller's user row up to date in its own statement (the first write creates
it, a token with a new email or name refreshes it: `api.tasks.queries._USER_ROW`). Once such a write
has committed for an owner (id, email and name, as a `Principal` holds them), the row is stored as
that owner says, and this worker's later writes for the same owner leave the upsert out: it could
only find the row current. A token with other claims for the same id (a new email, or the old one
again) replaces what is remembered for that id, so its first write refreshes the row. Why this
departure stays, and what it asks of a maintainer: docs/performance.md, "Writes without the
owner-row upsert".

Two writes with the upsert for the same user but other claims that overlap in this worker may commit
in one order and return in the other, and the one that returns last need not be the one whose claims
the row holds: its upsert may have found the row current in its snapshot, while the other then stored
its own claims and committed first. So a write that returns while such writes overlap remembers
nothing for the user, and the next write carries the upsert. Otherwise, every write of this worker
that could have stored other claims either committed before this one began (its snapshot saw them,
and its upsert stored its own over them) or begins after this one is remembered, so the row holds
this write's claims from its commit until a write that carries the upsert again. Overlapping writes
with the same claims (a user's tabs) leave the row with those claims whichever commits last, and
are remembered.
"""

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Protocol

from cachetools import TTLCache

from api.db.database import Database, Query, Rows
from api.db.errors import MissingReference


class Owner(Hashable, Protocol):
    """What a write stores of its caller, compared whole: `api.auth.principal.Principal`, which this
    floor cannot import (api/ sits in floors, and auth is above db: tests/test_layers.py)."""

    @property
    def id(self) -> str: ...


# Bounded, least recently used first out: forgetting an owner only costs its next write the upsert.
MAX_STORED_OWNERS = 10_000

# How long a worker trusts what it remembers: another worker may have stored other claims for the
# same user since (a user whose old token, still valid, and new one are both in use), and only the
# upsert finds out. So a row is at most this stale, and a busy user pays one upsert a minute.
REMEMBERED_FOR_SECONDS = 60.0


class StoredOwners:
    def __init__(self, maxsize: int = MAX_STORED_OWNERS, ttl: float = REMEMBERED_FOR_SECONDS) -> None:
        self._stored: TTLCache[str, Owner] = TTLCache(maxsize, ttl)
        # Writes carrying the upsert now running, by user id (bounded by the requests in flight): the
        # claims of the first, and how many; and the users for whom some carried other claims.
        self._storing: dict[str, tuple[Owner, int]] = {}
        self._overlapped: set[str] = set()

    async def run(self, database: Database, owner: Owner, query: Query) -> Rows:
        """Run `query` as `owner`, a write without the upsert of the owner's user row once this worker
        has stored the row as `owner` describes it; the one place that chooses between the two."""
        if query.without_owner_row is None:  # a read, or a statement that stores no user row
            return await database.run(owner.id, query)
        if owner in self:
            try:
                return await database.run(owner.id, query.for_stored_owner())
            except MissingReference:
                self.discard(owner)  # the row is gone after all: store it again
        with self.storing(owner):
            try:
                return await database.run(owner.id, query)
            except MissingReference:
                # The upsert found the row current and left it, and it was gone by the time the
                # write's foreign key looked (a DBA deleted the user meanwhile). Nothing was written;
                # sent again, the upsert finds it gone and stores it, as the next write would.
                return await database.run(owner.id, query)

    def __contains__(self, owner: Owner) -> bool:
        return self._stored.get(owner.id) == owner

    @contextmanager
    def storing(self, owner: Owner) -> Iterator[None]:
        """Around a write that carries the upsert for `owner`. Once it has committed, `owner` is
        remembered if no write with other claims for the same user overlapped it; otherwise, or when
        it raises, nothing is remembered for the user (the row's claims are unknown: one write may
        have committed after the other, or a failed one perhaps did)."""
        first, running = self._storing.get(owner.id, (owner, 0))
        if first != owner:
            self._overlapped.add(owner.id)
        self._storing[owner.id] = (first, running + 1)
        committed = False
        try:
            yield
            committed = True
        finally:
            self._stored_or_not(owner, committed=committed)

    def _stored_or_not(self, owner: Owner, *, committed: bool) -> None:
        first, running = self._storing.pop(owner.id)
        if committed and owner.id not in self._overlapped:
            self._stored[owner.id] = owner
        else:
            self._stored.pop(owner.id, None)
        if running > 1:
            self._storing[owner.id] = (first, running - 1)
        else:
            self._overlapped.discard(owner.id)

    def discard(self, owner: Owner) -> None:
        """When the row turned out missing after all (deleted meanwhile, say)."""
        self._stored.pop(owner.id, None)
