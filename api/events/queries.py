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

# Where the user's events stand now (`newest`), and whether a stream may resume after `:after`
# (`kept`). Now is the newest event id; for a user whose events were all purged, the newest purged
# (sql/migrations/0010_event_purges.sql); 0 for a user who never had one. A stream resumes:
# - from 0 (before any event) while none of the user's events was ever purged;
# - from where the purges stopped while no event came since: the position handed to a stream of a
#   user whose events were all purged, so an idle user's reconnects are not told to reset;
# - from one of the user's events while it is kept and nothing after it was purged (a DBA may
#   remove any event).
# In each case only while neither that event nor any after it is older than
# app.events_retention_hours: one that old counts as gone before a write purges it, so a client can
# rely on the retention it was told. Events after it are checked too, for an event's time is when
# its transaction began and its id when it took its user's lock (0008), so a later event can be the
# older. The user's newest event is the exception: nothing after it can have been missed, and once a
# write purges it the stream resumes from where the purge stopped, so it resumes without a reset
# before that purge too, rather than tell an idle user's every reconnect to.
_START = text(
    "SELECT greatest(mine.newest_event, coalesce(mine.purged_through, 0)) AS newest,"
    " CASE"
    " WHEN mine.after = 0 AND mine.purged_through IS NULL THEN true"
    " WHEN mine.after = mine.purged_through THEN mine.after >= mine.newest_event"
    " ELSE mine.after > coalesce(mine.purged_through, 0) AND EXISTS (SELECT FROM public.task_events"
    " WHERE user_id = :user_id AND id = mine.after)"
    " END AND (mine.after >= mine.newest_event OR NOT EXISTS (SELECT FROM public.task_events"
    " WHERE user_id = :user_id AND id >= mine.after AND created_at < mine.kept_since)) AS kept"
    " FROM (SELECT CAST(:after AS bigint) AS after,"
    " now() - make_interval(secs => current_setting('app.events_retention_hours')::float8 * 3600)"
    " AS kept_since,"
    " (SELECT coalesce(max(id), 0) FROM public.task_events WHERE user_id = :user_id) AS newest_event,"
    " (SELECT purged_through FROM public.task_event_purges WHERE user_id = :user_id) AS purged_through)"
    " AS mine"
)

# The user's next events after `:after`, each row saying `missed` false; or, when the stream cannot go
# on from `:after` without a reset, only one row, `missed` true and no event. It cannot when any event
# after `:after` was purged (sql/migrations/0010_event_purges.sql records every removal), when one of
# those next events is older than app.events_retention_hours (gone, as for `_START`, for a stream
# that could not read for that long), or when `:after` is no longer where the user's events stand:
# neither one of them, nor where the purges stopped, nor 0 before any purge. An erasure
# (sql/admin/forget_user.sql) leaves a stream there, having removed the user's events and their purge
# record at once: its client still shows the erased tasks, and a reconnect from there is told to
# reset (`_START`), so the open stream is too. One statement, so no purge can fall between reading
# the events and reading the record.
_AFTER = text(
    # An event whose task was deleted since keeps its place but no copy of the task
    # (sql/migrations/0016_deleted_tasks_leave_no_copy_in_events.sql): not sent, the task.deleted is.
    "WITH next AS (SELECT id, kind, task_id, task, created_at FROM public.task_events"
    " WHERE user_id = :user_id AND id > :after AND (task IS NOT NULL OR kind = 'task.deleted')"
    " ORDER BY id LIMIT :batch),"
    # Materialized: inlined, its record is looked up once for each time `mine` names it.
    " purged AS MATERIALIZED (SELECT coalesce((SELECT purged_through FROM public.task_event_purges"
    " WHERE user_id = :user_id), 0) AS through),"
    " mine AS (SELECT NOT (CAST(:after AS bigint) = purged.through"
    " OR CAST(:after AS bigint) > purged.through AND EXISTS (SELECT FROM public.task_events"
    " WHERE user_id = :user_id AND id = :after))"
    " OR EXISTS (SELECT FROM next WHERE created_at"
    " < now() - make_interval(secs => current_setting('app.events_retention_hours')::float8 * 3600))"
    " AS missed FROM purged)"
    " SELECT mine.missed, next.id, next.kind, next.task_id, next.task"
    " FROM mine LEFT JOIN next ON NOT mine.missed"
    " ORDER BY next.id"
)


def start(user_id: str, after: int) -> Query:
    """One row: `newest`, where the user's events stand now, and `kept`, whether a stream may resume
    after `after` (see `_START`)."""
    return Query(_START, {"user_id": user_id, "after": after})


def events_after(user_id: str, after: int) -> Query:
    """The user's next events after `after`, oldest first, `missed` false on each; or one row,
    `missed` true and no event, when the stream cannot go on without a reset (see `_AFTER`)."""
    return Query(_AFTER, {"user_id": user_id, "after": after, "batch": BATCH})
