"""What a worker remembers of the user rows it stored (api/db/stored_owners.py): one set of claims
per user, only for a while, since another worker may store other claims for the same user, and
not from writes with other claims that overlap, since they may commit in either order."""

import contextlib
import time

from api.auth.principal import Principal
from api.db.stored_owners import StoredOwners


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
