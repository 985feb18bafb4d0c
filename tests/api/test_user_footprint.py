"""What one user can make the database hold: docs/operations.md, "What one user can make the service
hold", names every table a request can add a row to and the most rows one user may have there. These
tests hold the database to that table: a user who does all that adds rows, through the API, has no
more than it says anywhere, and a table a migration adds is not in the database unless it is there."""

import re
from typing import Any

import psycopg
from psycopg import sql

from api.app import create_app
from tests.support import PROJECT, new_user, serving_client, settings_for
from tests.test_docs_facts import _table_rows

OPERATIONS = PROJECT / "docs" / "operations.md"
_FOOTPRINT = "## What one user can make the service hold"
QUOTA = 3
# The schemas of the API's tables; yoyo's bookkeeping lives in public too, and no request writes it.
_SCHEMAS = ("public", "app")
_MIGRATIONS_OWN = re.compile(r"^public\._?yoyo")


def _documented_bounds() -> dict[str, tuple[str, int]]:
    """table -> (its owner column, the most rows one user may have there with a quota of QUOTA)."""
    bounds = {}
    for table, owner, most, *_ in _table_rows(OPERATIONS.read_text(encoding="utf-8"), _FOOTPRINT):
        factor = re.fullmatch(r"(twice )?`MAX_TASKS_PER_USER`|(\d+)", most)
        assert factor, f"{table}: '{most}' is neither a number nor (twice) `MAX_TASKS_PER_USER`"
        twice, rows = factor.groups()
        bound = int(rows) if rows else (2 if twice else 1) * QUOTA
        bounds[table.strip("`")] = (owner.strip("`"), bound)
    return bounds


def test_the_footprint_table_names_every_table_of_the_api(api_db: psycopg.Connection[Any]) -> None:
    tables = {
        f"{schema}.{name}"
        for schema, name in api_db.execute(
            "select schemaname, tablename from pg_tables where schemaname = any(%s)", [list(_SCHEMAS)]
        )
    }
    assert set(_documented_bounds()) == {table for table in tables if not _MIGRATIONS_OWN.match(table)}


def test_a_user_who_does_all_that_adds_rows_holds_no_more_than_the_docs_say(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user(email="alice@example.com", name="Alice")
    bounds = _documented_bounds()
    with serving_client(create_app(settings_for(api_db_url, max_tasks_per_user=QUOTA))) as client:

        def create(key: str) -> int:
            created = client.post(
                alice.tasks_url, json={"title": key}, headers={**alice.headers, "Idempotency-Key": key}
            )
            return created.status_code

        # Keyed creates past the quota, every task changed many times, then all deleted, again and
        # again: tasks, keys, tombstones of deleted tasks' keys and events, each as many as it can be.
        refused = 0
        for cycle in range(4):
            statuses = [create(f"cycle-{cycle}-{n}") for n in range(QUOTA + 2)]
            assert statuses.count(201) == QUOTA, statuses
            refused += statuses.count(409)
            listed = client.get(alice.tasks_url, headers=alice.headers)
            assert listed.status_code == 200
            ids = [task["id"] for task in listed.json()]
            for round_ in range(QUOTA + 2):
                for task_id in ids:
                    updated = client.put(
                        alice.task_url(task_id), json={"title": f"{round_}"}, headers=alice.headers
                    )
                    assert updated.status_code == 200
            if cycle < 3:
                for task_id in ids:
                    assert client.delete(alice.task_url(task_id), headers=alice.headers).status_code == 204
        assert refused == 4 * 2

    held = {}
    for table, (owner, _) in bounds.items():
        count = sql.SQL("select count(*) from {} where {} = %s").format(
            sql.Identifier(*table.split(".")), sql.Identifier(owner)
        )
        (held[table],) = api_db.execute(count, [alice.id]).fetchone() or (None,)
    # Each at its most, so that a bound made looser in the docs than the database keeps is noticed too.
    assert held == {table: most for table, (_, most) in bounds.items()}
