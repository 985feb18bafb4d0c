"""Which callers' user rows this worker knows to be stored as their tokens describe them.

A write can bring the caller's user row up to date in its own statement (the first write creates
it, a token with a new email or name refreshes it: `api.tasks.queries._USER_ROW`). Once such a write
has committed for an owner (id, email and name, as a `Principal` holds them), the row is stored as
that owner says, and this worker's later writes for the same owner leave the upsert out: it could
only find the row current. A token with other claims for the same id (a new email, or the old one
again) replaces what is remembered for that id, so its first write refreshes the row. Why this
departure stays, and what it asks of a maintainer: docs/performance.md, "Writes without the
owner-row upsert".
"""

from collections.abc import Hashable
from typing import Protocol

from cachetools import TTLCache


class Owner(Hashable, Protocol):
    """What a write stores of its caller (`api.auth.principal.Principal`): compared whole."""

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

    def __contains__(self, owner: Owner) -> bool:
        return self._stored.get(owner.id) == owner

    def add(self, owner: Owner) -> None:
        """After a write that carried the upsert for `owner` has committed."""
        self._stored[owner.id] = owner

    def discard(self, owner: Owner) -> None:
        """When the row turned out missing after all (deleted meanwhile, say)."""
        self._stored.pop(owner.id, None)
