"""The two statements a stream runs, each in a transaction of its own through `Database.run`, as the
stream's user: row-level security (sql/policies/task_events.sql) limits both to that user's events.

Each also names its owner, as every task statement does (api/tasks/ownership.py): the planner reads
the task_events_by_owner index, and a stream opened before a policy was weakened still reads only
its own user's events until the isolation check finds the weakening and stops its reads
(tests/test_isolation_watch.py).
"""

from sqlalchemy import text

from api.db.database import Query

# Events a stream sends per read; a stream further behind reads again at once.
BATCH = 100

_START = text(
    "SELECT (SELECT coalesce(max(id), 0) FROM public.task_events WHERE user_id = :user_id) AS newest,"
    " EXISTS (SELECT FROM public.task_events WHERE user_id = :user_id AND id = :after AND created_at"
    " >= now() - make_interval(secs => current_setting('app.events_retention_hours')::float8 * 3600))"
    " OR (CAST(:after AS bigint) = 0"
    " AND NOT EXISTS (SELECT FROM public.task_event_purges WHERE user_id = :user_id)) AS kept"
)
_AFTER = text(
    "SELECT id, kind, task_id, task FROM public.task_events"
    " WHERE user_id = :user_id AND id > :after ORDER BY id LIMIT :batch"
)


def start(user_id: str, after: int) -> Query:
    """The user's newest event id (0 when none), and whether a stream may resume after `after`: the
    trigger purges a user's events oldest first, so while the last event a client saw is kept, every
    event after it is too; and from 0 (before any event) while none of the user's was ever purged
    (sql/migrations/0010_event_purges.sql). An event older than app.events_retention_hours counts as
    gone before the user's next write purges it, so a client can rely on the retention it was told."""
    return Query(_START, {"user_id": user_id, "after": after})


def events_after(user_id: str, after: int) -> Query:
    """The user's next events after `after`, oldest first."""
    return Query(_AFTER, {"user_id": user_id, "after": after, "batch": BATCH})
