"""What a worker remembers of the user rows it stored (api/db/stored_owners.py): one set of claims
per user, and only for a while, since another worker may store other claims for the same user."""

import time

from api.auth.principal import Principal
from api.db.stored_owners import StoredOwners


def test_a_user_is_remembered_with_the_claims_stored_last_and_only_for_a_while() -> None:
    stored = StoredOwners(ttl=0.2)
    old, new = Principal("u", "old@example.com", "Old"), Principal("u", "new@example.com", "New")

    stored.add(old)
    assert old in stored
    stored.add(new)
    assert new in stored
    assert old not in stored, "the row now says new: a write with the old claims must store them again"

    time.sleep(0.3)
    assert new not in stored, "another worker may have stored other claims meanwhile"
