"""The two statements a stream runs, each in a transaction of its own through `Database.run`, as the
stream's user: row-level security (sql/policies/task_events.sql) limits both to that user's events."""

from sqlalchemy import text

from api.db.database import Query

# Events a stream sends per read; a stream further behind reads again at once.
BATCH = 100

_START = text(
    "SELECT (SELECT coalesce(max(id), 0) FROM public.task_events) AS newest,"
    " EXISTS (SELECT FROM public.task_events WHERE id = :after AND created_at >= now()"
    " - make_interval(secs => current_setting('app.events_retention_hours')::float8 * 3600))"
    " OR (CAST(:after AS bigint) = 0 AND NOT EXISTS (SELECT FROM public.task_event_purges)) AS kept"
)
_AFTER = text(
    "SELECT id, kind, task_id, task FROM public.task_events WHERE id > :after ORDER BY id LIMIT :batch"
)


def start(after: int) -> Query:
    """The user's newest event id (0 when none), and whether a stream may resume after `after`: the
    trigger purges a user's events oldest first, so while the last event a client saw is kept, every
    event after it is too; and from 0 (before any event) while none of the user's was ever purged
    (sql/migrations/0010_event_purges.sql). An event older than app.events_retention_hours counts as
    gone before the user's next write purges it, so a client can rely on the retention it was told."""
    return Query(_START, {"after": after})


def events_after(after: int) -> Query:
    """The user's next events after `after`, oldest first."""
    return Query(_AFTER, {"after": after, "batch": BATCH})
