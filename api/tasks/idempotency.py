"""Creates that are safe to retry: the Idempotency-Key request header (IETF httpapi draft).

A create with a key stores the key, a hash of the request and the id of the task it made, in the
transaction that creates the task (api/tasks/queries.py, `create_task_once`). A repeat with the same
key and body within IDEMPOTENCY_TTL_HOURS creates nothing and gets the first answer's status with
the task as it is now (so its current ETag), marked `Idempotent-Replayed: true`. The same key with
another body gets 422 idempotency-key-reused. Once the task is deleted, the key is a tombstone that
keeps neither the task nor the request's hash (sql/migrations/0013_tombstones_forget_the_request.sql)
and answers 410 task-deleted, whatever the body. A repeat that arrives while the first is still
being written waits for it at the key's primary key and then gets its answer too; requests reusing
an expired key at once may store it again before one another each time, and one that still finds it
taken after `_ROUNDS` tries gets 409 idempotency-key-in-use, creates nothing, and is retried as is.
Keys belong to
their user (row-level security, sql/policies/idempotency_keys.sql); expired keys, and a user's
tombstones past MAX_TASKS_PER_USER, are removed by keyed creates, so no background worker is needed.

The tombstones go oldest first, so a user stores at most twice the quota in keys, and one more for
each delete committed while a keyed create ran, which counted the keys before it (the next keyed create
drops those); the price is that a retry of a dropped tombstone's key, even within
IDEMPOTENCY_TTL_HOURS, creates its task anew.
"""

import hashlib
import json
from datetime import timedelta
from typing import Any

from fastapi import Request

from api.db.errors import AlreadyExists
from api.http.caller import Caller
from api.http.problems import idempotency_key_in_use, idempotency_key_reused, invalid_input, task_deleted
from api.settings import Settings
from api.tasks import queries
from api.tasks.models import IDEMPOTENCY_KEY_MAX_LENGTH, TaskCreate

_HEADER = "idempotency-key"
# A create with a key is tried at most this often: once, once more after forgetting the key stored
# but expired, and once more should the key expire again meanwhile (an IDEMPOTENCY_TTL_HOURS shorter
# than a round trip); past that, rather than loop, 409 idempotency-key-in-use asks the client to
# send the request again shortly, when the requests it raced with are done.
_ROUNDS = 3
# The unique key a repeated Idempotency-Key runs into (`PRIMARY KEY (user_id, key)`, 0005 migration):
# the one conflict that means "a repeat". Any other is a unique key on what users write, which must
# fail closed as it does for a create without a key (api/http/problems.py), not be answered 409:
# that would tell the caller another user stored the value.
_KEY_CONSTRAINT = "idempotency_keys_pkey"


def idempotency_key(request: Request) -> str | None:
    """The request's key: 1 to IDEMPOTENCY_KEY_MAX_LENGTH visible ASCII characters, sent bare or as a
    quoted sf-string, in one header field (two would leave open which create this is a retry of)."""
    given = request.headers.getlist(_HEADER)
    if not given:
        return None
    if len(given) > 1:
        raise invalid_input(f"header.{_HEADER}", "Send one Idempotency-Key header, not several.")
    value = given[0]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 0 < len(value) <= IDEMPOTENCY_KEY_MAX_LENGTH or not all("!" <= c <= "~" for c in value):
        raise invalid_input(
            f"header.{_HEADER}",
            f"Send 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters, such as a UUID.",
        )
    return value


def refuse_a_key(request: Request, instead: str) -> None:
    """422 for an Idempotency-Key on an operation that stores none and is not idempotent (a toggle):
    its retry would be done again, while the client believes the key makes it safe. `instead` says
    what does."""
    if _HEADER in request.headers:
        raise invalid_input(f"header.{_HEADER}", f"Only a create stores an Idempotency-Key: {instead}")


# The fields of a create when keys were first stored. A field added since is hashed only when it is
# not its default, so that a key stored before an upgrade still answers its retry after it, which
# otherwise hashes another body and is refused 422 idempotency-key-reused.
_FIRST_FIELDS = frozenset({"title", "description", "completed"})


def request_hash(data: TaskCreate) -> str:
    """The same task asked for twice hashes the same, however its JSON was spaced or ordered."""
    fields = data.model_dump(mode="json")
    hashed = {
        name: value
        for name, value in fields.items()
        if name in _FIRST_FIELDS or value != TaskCreate.model_fields[name].default
    }
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


async def create_once(
    caller: Caller, data: TaskCreate, key: str, settings: Settings
) -> tuple[dict[str, Any], bool]:
    """The created (or first) task as it is now, and whether it was created now; 410 once deleted."""
    expected = request_hash(data)
    query = queries.create_task_once(
        caller.user,
        data,
        key,
        expected,
        timedelta(hours=settings.idempotency_ttl_hours),
        tombstones_kept=settings.max_tasks_per_user,
    )
    for _ in range(_ROUNDS):
        try:
            (row,) = await caller.run(query)
            break
        except AlreadyExists as conflict:
            if conflict.constraint != _KEY_CONSTRAINT:
                raise
            # Another request with this key committed while this one ran: answer as a repeat of it.
            stored = await caller.run(queries.remembered(caller.user.id, key))
            if stored:
                row = {**stored[0], "outcome": "previous"}
                break
            # The key is stored but expired: forget it (and the user's other expired keys), then this
            # request is the key's first use, unless another request reusing it stores it first;
            # the next round then answers as a repeat of that one.
            await caller.run(queries.forget_expired_keys(caller.user.id))
    else:
        raise idempotency_key_in_use()
    # A tombstone first: it keeps no hash to compare, and answering 422 to one body and 410 to
    # another would tell which content the deleted task had.
    if row["task"] is None:
        raise task_deleted()
    if row["request_hash"] != expected:
        raise idempotency_key_reused()
    return row["task"], row["outcome"] == "created"
