"""A migration applied while the API serves (a rolling upgrade: the release before keeps writing
while the next one migrates) waits for the API's writes, and they for it; neither is cancelled for
a deadlock.

A create with an Idempotency-Key reads tasks (its key's task) before it inserts into tasks, in one
statement: it holds ACCESS SHARE on tasks and then asks for ROW EXCLUSIVE. A migration that holds a
lock on tasks that lets reads in but not writes (CREATE INDEX's SHARE) and later asks for ACCESS
EXCLUSIVE (DROP INDEX) closes a cycle with every such create that arrived in between. Each test runs
a migration's statements one at a time, as yoyo does in its one transaction, starts a keyed create
after the first, and waits past deadlock_timeout, as a build on a large table does, before the rest.
"""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import sqlparse

from api.app import create_app
from api.db.sql_files import SQL_DIR
from api.db.urls import libpq_url
from api.ops.migrations import apply_migrations
from tests.db.test_migrations import TITLE_INDEX
from tests.support import new_user, serving_client, settings_for, wait_until_it_waits_for

MIGRATIONS = SQL_DIR / "migrations"

# (the file run by hand, the file run whole before it on the migrated database, the title index after).
# The database is migrated to the newest, not rolled back with yoyo: the API serves only a database
# whose isolation is what the newest migrations make, which a later migration may change.
CASES = {
    "0014 applied": (
        "0014_titles_sort_by_code_point.sql",
        "0014_titles_sort_by_code_point.rollback.sql",
        'CREATE INDEX tasks_by_owner_title ON public.tasks USING btree (user_id, title COLLATE "C", id)',
    ),
    "0014 rolled back": (
        "0014_titles_sort_by_code_point.rollback.sql",
        None,
        "CREATE INDEX tasks_by_owner_title ON public.tasks USING btree (user_id, title, id)",
    ),
}


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.mark.parametrize("case", CASES)
def test_a_keyed_create_and_a_title_index_rebuild_wait_for_each_other(
    case: str, empty_db_url: str, background: ThreadPoolExecutor
) -> None:
    file, run_before, index_after = CASES[case]
    apply_migrations(empty_db_url)
    if run_before is not None:
        with psycopg.connect(libpq_url(empty_db_url)) as before:
            before.execute((MIGRATIONS / run_before).read_text(encoding="utf-8"))
    statements = [s for s in sqlparse.split((MIGRATIONS / file).read_text(encoding="utf-8")) if s.strip()]
    alice = new_user()
    # No isolation check while serving: one that met the migration's lock would refuse the create.
    settings = settings_for(empty_db_url, rate_limit_per_minute=0, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        first = api.post(alice.tasks_url, headers=alice.headers, json={"title": "milk"})
        assert first.status_code == 201, first.text
        migration: psycopg.Connection[tuple[Any, ...]]
        with psycopg.connect(libpq_url(empty_db_url)) as migration:
            migration.execute(statements[0])
            keyed = {**alice.headers, "Idempotency-Key": "eggs-1"}
            create = background.submit(api.post, alice.tasks_url, headers=keyed, json={"title": "eggs"})
            wait_until_it_waits_for(migration, create)
            (deadlock_timeout,) = migration.execute(
                "select setting::int from pg_settings where name = 'deadlock_timeout'"
            ).fetchone() or (1000,)
            # The create has looked for a deadlock (none yet) and waits on; the next statement's
            # wait is the one that would find it.
            time.sleep(deadlock_timeout / 1000 * 1.5)
            for statement in statements[1:]:
                migration.execute(statement)
            migration.commit()
            assert migration.execute(TITLE_INDEX).fetchone() == (index_after,)
        response = create.result()
        assert response.status_code == 201, response.text
        titles = [task["title"] for task in api.get(alice.tasks_url, headers=alice.headers).json()]
        assert titles == ["eggs", "milk"]
