"""The one transaction helper: identity is per transaction and never outlives it on a pooled connection."""

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.db import Database
from tests.support import LOGIN_ROLE, new_user, serving, settings_for

_IDENTITY = text(
    "select current_user, current_setting('role'), coalesce(current_setting('app.user_id', true), '')"
)


async def _identity_outside_a_request(engine: AsyncEngine) -> tuple[Any, ...]:
    async with engine.connect() as connection:
        row = (await connection.execute(_IDENTITY)).one()
        await connection.rollback()
        return tuple(row)


def test_login_role_bypasses_rls_so_the_role_switch_is_what_protects(
    migrated_db: psycopg.Connection[Any],
) -> None:
    row = migrated_db.execute("select rolbypassrls from pg_roles where rolname = current_user").fetchone()
    assert row == (True,), "the suite runs as a Neon-like BYPASSRLS login role"


def test_a_reused_connection_never_carries_identity_into_the_next_transaction(migrated_db_url: str) -> None:
    async def scenario() -> None:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=1))
        nobody = (LOGIN_ROLE, "none", "")
        try:
            async with database.transaction("alice", read_only=False) as transaction:
                assert tuple((await transaction.execute(_IDENTITY)).one()) == (
                    "todo_app",
                    "todo_app",
                    "alice",
                )
                await transaction.execute(text("insert into users (id) values ('alice')"))
                await transaction.execute(text("insert into tasks (user_id, title) values ('alice', 'mine')"))
            assert await _identity_outside_a_request(database.engine) == nobody

            with pytest.raises(RuntimeError):
                async with database.transaction("alice", read_only=False):
                    raise RuntimeError("the handler failed")
            assert await _identity_outside_a_request(database.engine) == nobody

            async with database.transaction("bob", read_only=True) as transaction:
                assert (await transaction.execute(text("select count(*) from tasks"))).scalar_one() == 0
                assert (await transaction.execute(text("select count(*) from users"))).scalar_one() == 0
            async with database.transaction("alice", read_only=True) as transaction:
                assert (await transaction.execute(text("select count(*) from tasks"))).scalar_one() == 1
        finally:
            await database.dispose()

    asyncio.run(scenario())


def test_read_transactions_are_read_only(migrated_db_url: str) -> None:
    async def scenario() -> None:
        database = Database.from_settings(settings_for(migrated_db_url))
        try:
            with pytest.raises(DBAPIError, match="read-only transaction"):
                async with database.transaction("alice", read_only=True) as transaction:
                    await transaction.execute(text("insert into users (id) values ('alice')"))
        finally:
            await database.dispose()

    asyncio.run(scenario())


def test_one_pooled_connection_shared_by_users_over_http(migrated_db_url: str) -> None:
    alice, bob = new_user(), new_user()
    with (
        serving(create_app(settings_for(migrated_db_url, db_pool_size=1))) as base_url,
        httpx.Client(base_url=base_url) as client,
    ):
        for _ in range(3):
            assert (
                client.post(alice.tasks_url, json={"title": "alice's"}, headers=alice.headers).status_code
                == 201
            )
            assert {t["user_id"] for t in client.get(bob.tasks_url, headers=bob.headers).json()} <= {bob.id}
            assert client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers).status_code == 201
        assert {t["title"] for t in client.get(alice.tasks_url, headers=alice.headers).json()} == {"alice's"}
        assert {t["title"] for t in client.get(bob.tasks_url, headers=bob.headers).json()} == {"bob's"}


def test_a_runaway_statement_is_cancelled(migrated_db_url: str) -> None:
    async def scenario() -> None:
        database = Database.from_settings(settings_for(migrated_db_url, db_statement_timeout_ms=200))

        async def sleep_as_alice() -> None:
            async with database.transaction("alice", read_only=True) as transaction:
                timeout = (await transaction.execute(text("show statement_timeout"))).scalar_one()
                assert timeout == "200ms"
                await transaction.execute(text("select pg_sleep(5)"))

        try:
            with pytest.raises(DBAPIError, match="statement timeout"):
                await sleep_as_alice()
            async with database.engine.connect() as connection:
                assert (await connection.execute(text("show statement_timeout"))).scalar_one() == "0"
        finally:
            await database.dispose()

    asyncio.run(scenario())
