"""The tasks the delete scenario deletes: a pool added to the loaded data before each of its phases.

A delete that finds no task answers 404 and costs less than one that deletes, so a random pick among a
user's tasks, as the other scenarios make, would measure fewer and fewer real deletes as the phase
goes on; and a create before each delete would count the create's cost as the delete's. So each
delete takes the next task of this pool that no request has taken yet: the pool's positions 0, 1,
2, ... go round the sample's users (position p is the (p // users)-th pool task of the sample's
(p % users)-th user), and wrk's thread t of T (common.lua) takes positions t, t + T, t + 2T, ...,
pgbench's client c of C the same with c and C (the delete script, bench/pgbench_scripts.py). No two
requests ask for the same task, every request is a real delete by the task's owner, and each user
loses about as many tasks as the others.

A pool task is what the API leaves behind a create: the row, its task.created event carrying the
task (which the delete clears since 0016: the work a delete does on events is measured, not
skipped) and the owner's counts. They are written set-based with the triggers off, as the dataset
is (bench/dataset.py): through the triggers, row by row, 50,000 tasks take over a minute here, and
every phase needs a pool of its own.
"""

import math
from dataclasses import dataclass

import psycopg

from bench.dataset import user_id_sql
from bench.sample import Sample

# More deletes a second than any side reaches on this machine (pgbench's own, a prepared pipeline,
# is the fastest), so that a phase never runs out: a request past the pool would answer 404 (wrk
# counts it as non-2xx) or delete nothing (pgbench). One spare task per user is the one wrk asks
# for once before the run to check the script (script_verify_request), and never sends.
_MOST_DELETES_PER_SECOND = 10_000


@dataclass(frozen=True)
class DeletablePool:
    sample: Sample
    per_user: int

    @classmethod
    def for_phases_of(cls, sample: Sample, seconds: int) -> "DeletablePool":
        return cls(sample, math.ceil(_MOST_DELETES_PER_SECOND * seconds / sample.count) + 1)

    @property
    def first_id(self) -> int:
        """Past the loaded tasks, which restore keeps; restore deletes the pool with every task above them."""
        return self.sample.size.tasks + 1

    @property
    def last_id(self) -> int:
        return self.first_id + self.sample.count * self.per_user - 1

    def task_id(self, position: int) -> int:
        """The task the pool's `position`-th delete takes; common.lua and the pgbench script say it again."""
        user_index, nth = position % self.sample.count, position // self.sample.count
        return self.first_id + user_index * self.per_user + nth

    def user_number(self, position: int) -> int:
        return self.sample.user_numbers()[position % self.sample.count]

    def pgbench_variables(self) -> dict[str, int]:
        return {"deletable_first": self.first_id, "deletable_per_user": self.per_user}

    def add(self, superuser_url: str) -> None:
        """Insert the pool, its events and counts, after `dataset.restore` (which removes them)."""
        values = {
            "first_id": self.first_id,
            "per_user": self.per_user,
            "users": self.sample.count,
            "stride": self.sample.stride,
        }
        with psycopg.connect(superuser_url, autocommit=True) as connection, connection.transaction():
            connection.execute("set local session_replication_role = replica")
            connection.execute("set local timezone = 'UTC'")  # as the trigger writes an event's task
            connection.execute(_INSERT_TASKS, values)
            connection.execute(_INSERT_EVENTS, values)
            connection.execute(_COUNT_TASKS, values)
            connection.execute(_COUNT_EVENTS, values)
            # Every task above the pool went with restore: creates may go on from here.
            connection.execute(
                "select setval(pg_get_serial_sequence('public.tasks', 'id'), %s)", [self.last_id]
            )
        with psycopg.connect(superuser_url, autocommit=True) as connection:
            connection.execute("vacuum (analyze) public.tasks, public.task_events")


# User k of the sample (0-based) is user number 1 + k * stride (bench/sample.py).
_POOL = f"""
    SELECT %(first_id)s::bigint + k * %(per_user)s::int + nth AS id,
           {user_id_sql("1 + k * %(stride)s::int")} AS user_id
    FROM generate_series(0, %(users)s::int - 1) AS k
    CROSS JOIN generate_series(0, %(per_user)s::int - 1) AS nth
"""  # noqa: S608 (built from constants only)

_INSERT_TASKS = f"""
INSERT INTO public.tasks (id, user_id, title) OVERRIDING SYSTEM VALUE
SELECT id, user_id, 'Deletable task ' || id FROM ({_POOL}) AS pool
"""  # noqa: S608 (built from constants only)

# The event the trigger writes for a create (app.publish_task_event): the task as stored, in UTC.
_INSERT_EVENTS = """
INSERT INTO public.task_events (user_id, kind, task_id, task)
SELECT t.user_id, 'task.created', t.id, to_jsonb(t)
FROM public.tasks AS t
WHERE t.id >= %(first_id)s::bigint
ORDER BY t.id
"""

_COUNT_TASKS = f"""
INSERT INTO app.task_counts AS counted (user_id, tasks)
SELECT user_id, count(*) FROM ({_POOL}) AS pool GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET tasks = counted.tasks + excluded.tasks
"""  # noqa: S608 (built from constants only)

_COUNT_EVENTS = f"""
INSERT INTO app.task_event_counts AS counted (user_id, events)
SELECT user_id, count(*) FROM ({_POOL}) AS pool GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET events = counted.events + excluded.events
"""  # noqa: S608 (built from constants only)
