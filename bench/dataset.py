"""The benchmark dataset, loaded with set-based SQL as the superuser.

User n (1-based) has the id 'u' followed by n padded to 31 digits (32 characters, like a Better Auth
id), the email user<n>@example.com and the name 'User <n>', which is exactly what the benchmark's
tokens carry, so a create finds the user's row current and does not rewrite it. User n's tasks have
the ids (n - 1) * tasks_per_user + 1 ... n * tasks_per_user, so the wrk and pgbench scripts can
address existing tasks of the same user without asking the database.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

# Big enough for progress reports on `large`, small enough that each chunk commits in seconds.
_TASKS_PER_CHUNK = 500_000


@dataclass(frozen=True)
class Size:
    name: str
    users: int
    tasks_per_user: int

    @property
    def tasks(self) -> int:
        return self.users * self.tasks_per_user


SIZES = {
    "small": Size("small", users=1_000, tasks_per_user=20),
    "large": Size("large", users=100_000, tasks_per_user=100),
}


def user_id(number: int) -> str:
    return "u" + str(number).rjust(31, "0")


def user_email(number: int) -> str:
    return f"user{number}@example.com"


def user_name(number: int) -> str:
    return f"User {number}"


def user_id_sql(number: str) -> str:
    """`user_id` as SQL, for a SQL expression (or pgbench variable) holding the user's number."""
    return f"('u' || lpad(({number})::text, 31, '0'))"


def user_email_sql(number: str) -> str:
    return f"('user' || ({number})::text || '@example.com')"


def user_name_sql(number: str) -> str:
    return f"('User ' || ({number})::text)"


def first_task_id(number: int, tasks_per_user: int) -> int:
    return (number - 1) * tasks_per_user + 1


_VERBS = (
    "Buy", "Call", "Email", "Fix", "Review", "Plan", "Book", "Clean", "Write", "Read",
    "Pay", "Schedule", "Update", "Prepare", "Send", "Check", "Organise", "Cancel", "Renew", "Return",
)  # fmt: skip
_OBJECTS = (
    "milk", "the dentist", "the quarterly report", "the bike tyre", "flights to Lisbon", "the kitchen",
    "a blog post", "the tax return", "the electricity bill", "the team meeting", "birthday presents",
    "the car insurance", "the passport", "the garden shed", "slides for Monday", "the landlord",
    "the gym membership", "the library books", "a thank-you note", "the project budget",
    "the broken lamp", "groceries", "the plumber", "the conference talk", "the onboarding docs",
)  # fmt: skip
_WHEN = (
    "", "", "", " today", " tomorrow", " before Friday", " this weekend", " next week",
    " (urgent)", " again", " for Mum", " after lunch",
)  # fmt: skip
_DESCRIPTIONS = (
    "Two litres, the oat one.",
    "Ask about the invoice from last month and whether it was paid twice.",
    "Check the notes from the last meeting first.",
    "Keep the receipt.",
    "Needs a second pair of eyes before it goes out.",
    "Compare at least three quotes; the cheapest was not the best last time.",
    "Bring the reference number: 4471-AB.",
    "Only if the weather holds.",
    "Remember the charger.",
    "Block out an hour in the calendar so it actually happens, and tell the others when it is done.",
)


def _array(words: tuple[str, ...]) -> str:
    quoted = ", ".join("'" + word.replace("'", "''") + "'" for word in words)
    return f"(ARRAY[{quoted}]::text[])"


def _pick(words: tuple[str, ...]) -> str:
    return f"{_array(words)}[1 + floor(random() * {len(words)})::int]"


# Volatile expressions in the inner select are evaluated per row (Postgres does not flatten such a
# subquery), so each task gets its own title, state and age; the outer select derives updated_at.
_INSERT_TASKS = f"""
INSERT INTO public.tasks (id, user_id, title, description, completed, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT id, user_id, title, description, completed, created_at,
       created_at + (now() - created_at) * age_of_last_change
FROM (
    SELECT (u - 1) * %(tasks_per_user)s::bigint + t AS id,
           {user_id_sql("u")} AS user_id,
           {_pick(_VERBS)} || ' ' || {_pick(_OBJECTS)} || {_pick(_WHEN)} AS title,
           CASE WHEN random() < 0.4 THEN NULL ELSE {_pick(_DESCRIPTIONS)} END AS description,
           random() < 0.35 AS completed,
           now() - random() * interval '365 days' AS created_at,
           random() ^ 3 AS age_of_last_change
    FROM generate_series(%(first_user)s::int, %(last_user)s::int) AS u
    CROSS JOIN generate_series(1, %(tasks_per_user)s::int) AS t
) AS generated
"""  # noqa: S608 (built from constants only)

_INSERT_USERS = f"""
INSERT INTO public.users (id, email, name, created_at)
SELECT {user_id_sql("n")}, {user_email_sql("n")}, {user_name_sql("n")}, now() - interval '400 days'
FROM generate_series(1, %(users)s::int) AS n
"""  # noqa: S608 (built from constants only)

# The indexes besides the primary key, to drop before the load and build again after it: building an
# index once is much faster than maintaining it for every row. Same names, same definitions.
_SECONDARY_INDEXES = """
SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
FROM pg_index
WHERE indrelid = 'public.tasks'::regclass AND NOT indisprimary
  -- an index a constraint stands on (tasks_owner_and_id_key) cannot be dropped on its own
  AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = indexrelid)
ORDER BY indexrelid::regclass::text
"""


def load(superuser_url: str, size: Size, progress: Callable[[str], None] = print) -> None:
    """Fill the migrated, empty database with `size`, then VACUUM ANALYZE it."""
    started = time.monotonic()
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        connection.execute("select setseed(0.5)")
        # Rows are consistent by construction (every task's owner is inserted first), so the
        # per-row foreign-key triggers can be skipped for the load.
        connection.execute("set session_replication_role = replica")
        connection.execute("set synchronous_commit = off")
        connection.execute("set maintenance_work_mem = '1GB'")
        indexes = connection.execute(_SECONDARY_INDEXES).fetchall()
        for name, _definition in indexes:
            connection.execute(f"drop index {name}")
        connection.execute(_INSERT_USERS, {"users": size.users})
        users_per_chunk = max(1, _TASKS_PER_CHUNK // size.tasks_per_user)
        for first_user in range(1, size.users + 1, users_per_chunk):
            last_user = min(size.users, first_user + users_per_chunk - 1)
            connection.execute(
                _INSERT_TASKS,
                {"first_user": first_user, "last_user": last_user, "tasks_per_user": size.tasks_per_user},
            )
            progress(
                f"  {last_user * size.tasks_per_user:,} of {size.tasks:,} tasks"
                f" ({time.monotonic() - started:.0f} s)"
            )
        connection.execute("select setval(pg_get_serial_sequence('public.tasks', 'id'), %s)", [size.tasks])
        connection.execute("reset session_replication_role")
        for name, definition in indexes:
            connection.execute(definition)
            progress(f"  index {name} built ({time.monotonic() - started:.0f} s)")
        connection.execute("vacuum (analyze) public.users, public.tasks")
    progress(f"  loaded and vacuumed in {time.monotonic() - started:.0f} s")


def restore(superuser_url: str, size: Size) -> None:
    """Back to the loaded data before a phase: delete the tasks that earlier creates added and the
    live-changes events every write left (the load makes none), and vacuum away the row versions the
    writes left, so every phase measures the same dataset.

    Without this a user's first page grows from 20 tasks to about 70 after one create scenario (both
    sides add rows), and every list measured after it serialises three times as many rows. Each write
    also rewrites its user's counter rows (app.task_counts, app.task_event_counts), which bloat
    between phases unless vacuumed, and pgbench's tps falls with them (bench/RESULTS.md, "Rounds that
    slow down"). The whole database is vacuumed, so no table a later migration writes is forgotten.
    """
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        with connection.transaction():
            # With the triggers off, as the load: through them each deleted task writes an event and
            # clears its earlier ones (0016), and the delete scenario's leftover pool
            # (bench/deletable.py) took minutes. The counts go back to none, as the load leaves them.
            connection.execute("set local session_replication_role = replica")
            connection.execute("delete from public.tasks where id > %s", [size.tasks])
            connection.execute("delete from app.task_counts")
        # DELETE, not TRUNCATE, which the database refuses for events (0012); the purge records the
        # deletion makes go with them.
        connection.execute("delete from public.task_events")
        connection.execute("delete from public.task_event_purges")
        connection.execute("delete from app.task_event_counts")
        connection.execute("vacuum (analyze)")
