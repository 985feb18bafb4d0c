"""Which callers' user rows this worker knows to be stored as their tokens describe them.

A write can bring the caller's user row up to date in its own statement (the first write creates
it, a token with a new email or name refreshes it: `api.tasks.queries._USER_ROW`). Once such a write
has committed for an owner (id, email and name, as a `Principal` holds them), the row is stored as
that owner says, and this worker's later writes for the same owner leave the upsert out: it could
only find the row current. A token with other claims is another owner, so its first write refreshes
the row. Why this departure stays, and what it asks of a maintainer: docs/performance.md,
"Writes without the owner-row upsert".
"""

from collections.abc import Hashable

from cachetools import LRUCache

# Bounded, least recently stored first out: forgetting an owner only costs its next write the upsert.
MAX_STORED_OWNERS = 10_000


class StoredOwners:
    def __init__(self, maxsize: int = MAX_STORED_OWNERS) -> None:
        self._stored: LRUCache[Hashable, None] = LRUCache(maxsize)

    def __contains__(self, owner: Hashable) -> bool:
        return owner in self._stored

    def add(self, owner: Hashable) -> None:
        """After a write that carried the upsert for `owner` has committed."""
        self._stored[owner] = None

    def discard(self, owner: Hashable) -> None:
        """When the row turned out missing after all (deleted meanwhile, say)."""
        self._stored.pop(owner, None)
