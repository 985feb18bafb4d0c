"""What a worker remembers of the user rows it stored (api/db/stored_owners.py): one set of claims
per user, only for a while, since another worker may store other claims for the same user, and
not from writes with other claims that overlap, since they may commit in either order."""

import asyncio
import contextlib
import time
from typing import cast

from api.auth.principal import Principal
from api.db.database import Database, Query, Rows
from api.db.errors import MissingReference
from api.db.stored_owners import StoredOwners
from api.tasks import queries


class _RefusedError(Exception):
    pass


def _write(stored: StoredOwners, owner: Principal, *, committed: bool = True) -> None:
    with contextlib.suppress(_RefusedError), stored.storing(owner):
        if not committed:
            raise _RefusedError


def test_a_user_is_remembered_with_the_claims_stored_last_and_only_for_a_while() -> None:
    stored = StoredOwners(ttl=0.2)
    old, new = Principal("u", "old@example.com", "Old"), Principal("u", "new@example.com", "New")

    _write(stored, old)
    assert old in stored
    _write(stored, new)
    assert new in stored
    assert old not in stored, "the row now says new: a write with the old claims must store them again"

    time.sleep(0.3)
    assert new not in stored, "another worker may have stored other claims meanwhile"


def test_after_overlapping_or_failed_writes_nothing_is_remembered_for_the_user() -> None:
    stored = StoredOwners()
    old, new = Principal("u", "old@example.com", "Old"), Principal("u", "new@example.com", "New")
    other = Principal("v", None, None)

    _write(stored, other)
    with stored.storing(old), stored.storing(new):
        pass
    assert (old in stored, new in stored) == (False, False), "either may have committed last"
    assert other in stored, "another user's writes are theirs alone"

    _write(stored, old)
    assert old in stored, "a write that ran alone is remembered again"
    _write(stored, new, committed=False)
    assert (old in stored, new in stored) == (False, False), "a failed write may still have committed"


def test_overlapping_writes_with_the_same_claims_are_remembered() -> None:
    """A user's tabs: whichever commits last, the row holds the claims they share."""
    stored = StoredOwners()
    owner, same = Principal("u", "a@example.com", "A"), Principal("u", "a@example.com", "A")

    first, second = stored.storing(owner), stored.storing(same)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert owner in stored
    second.__exit__(None, None, None)
    assert owner in stored


class _Database:
    """Records the statement each run sends; refuses the write without the upsert when told to."""

    def __init__(self, *, row_missing: bool = False) -> None:
        self.sent: list[str] = []
        self.row_missing = row_missing

    async def run(self, user_id: str, query: Query, *, read_only: bool) -> Rows:
        upserts = "user_row" in str(query.statement)
        self.sent.append("with upsert" if upserts else "without")
        if self.row_missing and not upserts:
            raise MissingReference("tasks_user_id_fkey")
        return []


def _run(stored: StoredOwners, database: _Database, owner: Principal, query: Query) -> None:
    asyncio.run(stored.run(cast(Database, database), owner, query, read_only=False))


def test_run_leaves_the_upsert_out_only_for_a_stored_owner_and_stores_again_a_row_found_missing() -> None:
    stored, database, owner = StoredOwners(), _Database(), Principal("u", "u@example.com", "U")
    toggle = queries.set_completed(owner, 1, None)

    _run(stored, database, owner, toggle)
    _run(stored, database, owner, toggle)
    assert database.sent == ["with upsert", "without"]

    database.row_missing = True  # a DBA deleted the user row meanwhile
    _run(stored, database, owner, toggle)
    assert database.sent[2:] == ["without", "with upsert"]


def test_run_sends_a_read_as_it_is() -> None:
    stored, database, owner = StoredOwners(), _Database(), Principal("u", "u@example.com", "U")
    _run(stored, database, owner, queries.get_task(owner.id, 1))
    assert database.sent == ["without"]
    assert owner not in stored, "a read stores no user row"
