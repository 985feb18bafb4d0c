"""sql/checks/expected_reach.json, what the isolation check expects todo_app to reach, is exactly
what the shipped migrations and sql/policies/ make: it cannot drift from them unnoticed."""

import asyncio
from typing import Any

import psycopg

from api.db.reach import REGENERATE, Reach, differences, expected_reach, read_reach


async def _live_reach(url: str) -> list[Reach]:
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as connection,
        connection.transaction(force_rollback=True),
    ):
        return await read_reach(connection)


def test_the_shipped_expected_state_is_what_the_migrations_make(migrated_db_url: str) -> None:
    live = asyncio.run(_live_reach(migrated_db_url))
    changed = [difference.message for difference in differences(live, expected_reach())]
    assert not changed, (
        "sql/checks/expected_reach.json no longer matches what the migrations and sql/policies/ make. "
        f"If that change is intended, regenerate it with `{REGENERATE}` (from the project root, "
        "e.g. `.venv/bin/todo-api policies --write-expected`) and commit the diff:\n  " + "\n  ".join(changed)
    )


def test_the_expected_state_names_the_objects_isolation_rests_on() -> None:
    kinds: dict[str, set[str]] = {}
    for row in expected_reach():
        kinds.setdefault(row.kind, set()).add(row.object)
    assert {"public.tasks", "public.users", "public.idempotency_keys"} <= kinds["row level security"]
    assert "todo_app" in kinds["role"]
    assert "membership" not in kinds, "todo_app belongs to no role"
    assert "default privileges" not in kinds


def test_a_difference_names_the_object_and_both_states(migrated_db: psycopg.Connection[Any]) -> None:
    shipped = expected_reach()
    loosened = [
        Reach(row.kind, row.object, "enabled, not forced") if row.object == "public.tasks" else row
        for row in shipped
        if row.kind != "trigger"
    ]
    messages = [difference.message for difference in differences(loosened, shipped)]
    assert (
        "row level security public.tasks differs from what todo-api ships: it is enabled, not forced; "
        "shipped: enabled, forced"
    ) in messages
    assert any(
        message.startswith('trigger public.tasks "tasks_counted" is shipped by todo-api but gone')
        for message in messages
    )
