"""A Postgres a DBA runs with settings of their own (ALTER DATABASE ... SET, ALTER ROLE ... SET,
postgresql.conf, the URL's options) that change how the server writes what it sends: the API still
answers as its contract says, or refuses at start in one line naming the setting.
"""

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import NoopExecutor

from api.app import create_app
from tests.api.events_client import opened
from tests.conftest import url_for
from tests.support import (
    LOGIN_ROLE,
    SECRET,
    as_role,
    cli_env,
    new_user,
    run_cli,
    serve_command,
    serve_process,
    serving,
    serving_client,
    settings_for,
)
from tests.test_cli_failures import assert_one_clear_failure

# How a DBA writes times for people: each made psycopg, which parses a timestamptz only in DateStyle
# ISO and gives it in the session's TimeZone, fail every request with a task in it (a 500) or render
# its times with the DBA's offset where the contract says UTC.
TIME_SETTINGS = [
    pytest.param("DateStyle", "SQL, DMY", id="DateStyle-SQL"),
    pytest.param("DateStyle", "German", id="DateStyle-German"),
    pytest.param("TimeZone", "Asia/Kolkata", id="TimeZone-Kolkata"),
]


def _alter_database(owner_url: str, name: str, value: str) -> None:
    with psycopg.connect(owner_url, autocommit=True) as owner:
        owner.execute(
            sql.SQL("alter database {} set {} = {}").format(
                sql.Identifier(owner.info.dbname), sql.Identifier(name), sql.Literal(value)
            )
        )


def _is_utc(moment: str) -> bool:
    return moment.endswith("Z")


async def _write_and_read(base_url: str) -> dict[str, Any]:
    alice = new_user(email="alice@example.com", name="Alice")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(alice.tasks_url, json={"title": "Café"}, headers=alice.headers)
        assert created.status_code == 201, created.text
        task = created.json()
        got = await client.get(alice.task_url(task["id"]), headers=alice.headers)
        listed = await client.get(alice.tasks_url, headers=alice.headers)
        toggled = await client.patch(f"{alice.task_url(task['id'])}/complete", headers=alice.headers)
        async with opened(client, alice, last_event_id="0") as stream:
            event = await stream.next()
    assert (got.status_code, listed.status_code, toggled.status_code) == (200, 200, 200)
    return {"created": task, "got": got.json(), "listed": listed.json()[0], "event": event.data}


@pytest.mark.parametrize(("name", "value"), TIME_SETTINGS)
def test_times_read_as_the_contract_says_whatever_the_databases_date_style_and_time_zone(
    migrated_db_url: str, name: str, value: str
) -> None:
    _alter_database(migrated_db_url, name, value)
    with serving(create_app(settings_for(as_role(migrated_db_url)))) as base_url:
        seen = asyncio.run(_write_and_read(base_url))
    created = seen["created"]
    assert _is_utc(created["created_at"]), created
    assert _is_utc(created["updated_at"]), created
    # One moment, written the same way by every representation of the task.
    assert {seen[where]["created_at"] for where in ("got", "listed", "event")} == {created["created_at"]}


@pytest.mark.parametrize(("name", "value"), TIME_SETTINGS[:1])
def test_serve_starts_whatever_the_databases_date_style(
    tmp_path: Path, migrated_db_url: str, name: str, value: str
) -> None:
    """Its start-up check read the server's start time, and serve ended in a traceback
    (NotImplementedError: can't parse timestamptz with DateStyle 'SQL, DMY')."""
    _alter_database(migrated_db_url, name, value)
    env = cli_env(DATABASE_URL=as_role(migrated_db_url), BETTER_AUTH_SECRET=SECRET)
    with serve_process(
        serve_command(env),
        cwd=tmp_path,
        env=env,
        output=tmp_path / "serve.log",
    ) as (base_url, _):
        assert httpx.get(f"{base_url}/readyz").status_code == 200


async def _store_and_hear(base_url: str, title: str) -> tuple[int, str, Any]:
    alice = new_user()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(alice.tasks_url, json={"title": title}, headers=alice.headers)
        if created.status_code != 201:
            return created.status_code, created.text, None
        got = await client.get(alice.task_url(created.json()["id"]), headers=alice.headers)
        async with opened(client, alice, last_event_id="0") as stream:
            event = await stream.next()
    return got.status_code, got.json()["title"], event.data["title"]


@pytest.mark.parametrize("where", ["database", "url"])
def test_any_title_is_stored_and_heard_whatever_client_encoding_the_dba_gives_the_sessions(
    migrated_db_url: str, where: str
) -> None:
    """With client_encoding LATIN1 a title outside it was a 500 (psycopg could not encode the query),
    and an event with an accent in it a traceback that cut the stream (json.loads wants UTF-8)."""
    url = as_role(migrated_db_url)
    if where == "database":
        _alter_database(migrated_db_url, "client_encoding", "LATIN1")
    else:
        url += "&options=-c%20client_encoding%3DLATIN1"
    title = "Café, 東京, ✓"
    with serving(create_app(settings_for(url))) as base_url:
        assert asyncio.run(_store_and_hear(base_url, title)) == (200, title, title)


@pytest.mark.parametrize("where", ["database", "environment"])
def test_the_commands_speak_utf_8_whatever_client_encoding_the_dba_or_the_shell_gives(
    tmp_path: Path, migrated_db_url: str, where: str
) -> None:
    """With client_encoding SQL_ASCII (psycopg then reads text as bytes), serve's start-up check ended
    in a traceback, `policies` in another (exit 1, the status of findings), and a first migrate failed
    (the environment probe, /tmp/s79-envs): every connection of the commands speaks UTF-8 now, as the
    pool's did."""
    variables = {"DATABASE_URL": as_role(migrated_db_url), "BETTER_AUTH_SECRET": SECRET}
    if where == "database":
        _alter_database(migrated_db_url, "client_encoding", "SQL_ASCII")
    else:
        variables["PGCLIENTENCODING"] = "SQL_ASCII"
    for command, said in [("migrate", "none pending"), ("policies", "Findings: none")]:
        result = run_cli(command, cwd=tmp_path, MIGRATION_DATABASE_URL=migrated_db_url, **variables)
        assert result.returncode == 0, result.stdout + result.stderr
        assert said in result.stdout, result.stdout
    env = cli_env(**variables)
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        title = "Café, 東京, ✓"
        assert asyncio.run(_store_and_hear(base_url, title)) == (200, title, title)


def test_the_checks_read_the_catalog_whatever_quoting_of_identifiers_the_dba_turns_on(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """quote_all_identifiers changes only how names are written, but the checks compare written
    names: with it on, `migrate` listed some 115 false differences ("function "app"."count_tasks"()
    is not in what todo-api ships", GRANTs already made), `policies` called the tables missing and
    `serve` refused saying to migrate (the database-settings probe of stop 81)."""
    _alter_database(migrated_db_url, "quote_all_identifiers", "on")
    variables = {"DATABASE_URL": as_role(migrated_db_url), "BETTER_AUTH_SECRET": SECRET}
    for command, said in [("migrate", "none pending"), ("policies", "Findings: none")]:
        result = run_cli(command, cwd=tmp_path, MIGRATION_DATABASE_URL=migrated_db_url, **variables)
        assert result.returncode == 0, result.stdout + result.stderr
        assert said in result.stdout, result.stdout
    # Its listing too, written as the tables are named (the mutation probe of stop 82: `"public"."tasks"`).
    assert "  public.tasks (owner " in result.stdout, result.stdout
    alice = new_user()
    with serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client:
        created = client.post(alice.tasks_url, json={"title": "quoted"}, headers=alice.headers)
        assert created.status_code == 201, created.text
        assert client.get("/readyz").status_code == 200


def test_the_checks_read_their_own_literals_whatever_string_escaping_the_dba_turns_off(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """With standard_conforming_strings off, isolation.sql's `'pg\\_%'` (schemas of Postgres's own)
    meant `'pg_%'`: a table open to todo_app without row-level security, in a schema named `pgx`,
    went unreported (the verification probe of stop 81)."""
    _alter_database(migrated_db_url, "standard_conforming_strings", "off")
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        owner.execute("create schema pgx")
        owner.execute("create table pgx.notes (user_id text, body text)")
        owner.execute("grant usage on schema pgx to todo_app")
        owner.execute("grant select on pgx.notes to todo_app")
    policies = run_cli(
        "policies", cwd=tmp_path, DATABASE_URL=as_role(migrated_db_url), BETTER_AUTH_SECRET=SECRET
    )
    assert policies.returncode == 1, policies.stdout + policies.stderr
    assert "table pgx.notes is open to todo_app without row-level security enabled" in policies.stdout, (
        policies.stdout
    )
    # And listed among the tables (the mutation probe of stop 82: the audit's own listing left it out).
    assert "  pgx.notes (owner " in policies.stdout, policies.stdout


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_concurrent_writes_of_one_user_all_succeed_whatever_isolation_level_the_dba_makes_the_default(
    migrated_db_url: str, level: str
) -> None:
    """The API's one-statement transactions are written for READ COMMITTED (a write that waited for a
    row lock reads the row as it is after that lock). Under a DBA's default_transaction_isolation of
    repeatable read or serializable, such a write was a serialization failure instead: a 503 that
    said the database could not be reached, for some of a user's concurrent writes."""
    _alter_database(migrated_db_url, "default_transaction_isolation", level)
    alice = new_user()
    with serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client:
        task = client.post(alice.tasks_url, json={"title": "first"}, headers=alice.headers).json()

        def update(n: int) -> int:
            body = {"title": f"update {n}"}
            return client.put(alice.task_url(task["id"]), json=body, headers=alice.headers).status_code

        def create(n: int) -> int:
            return client.post(
                alice.tasks_url, json={"title": f"task {n}"}, headers=alice.headers
            ).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            updates = list(pool.map(update, range(12)))
            creates = list(pool.map(create, range(12)))
        final = client.get(alice.task_url(task["id"]), headers=alice.headers).json()
        listed = client.get(alice.tasks_url, params={"limit": 100}, headers=alice.headers).json()
    assert updates == [200] * 12
    assert creates == [201] * 12
    assert final["version"] == 1 + 12
    assert len(listed) == 1 + 12


@pytest.fixture(params=["LATIN1", "SQL_ASCII"])
def latin1_db_url(
    superuser_url: str, migrated_template: NoopExecutor, request: pytest.FixtureRequest
) -> Iterator[str]:
    """An empty database encoded in LATIN1 (or SQL_ASCII), owned by the login role, as an older
    cluster's may be."""
    encoding = request.param
    dbname = f"todo_{encoding.lower()}"
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(
            sql.SQL("create database {} owner {} encoding {} locale 'C' template template0").format(
                sql.Identifier(dbname), sql.Identifier(LOGIN_ROLE), sql.Literal(encoding)
            )
        )
        try:
            yield url_for(migrated_template, dbname)
        finally:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(dbname)))


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_a_database_not_encoded_in_utf8_is_refused_in_one_line(
    tmp_path: Path, latin1_db_url: str, command: str
) -> None:
    """Served, a title LATIN1 lacks (東京, ✓) was a 500: Postgres refuses to store a character its
    encoding has not. A SQL_ASCII database's session hands back text as bytes, which the refusal
    named as Python writes them, "b'SQL_ASCII'" (the mutation probe, /tmp/s77-mut3)."""
    encoding = "LATIN1" if "latin1" in latin1_db_url else "SQL_ASCII"
    args = ["serve", "--port", "0"] if command == "serve" else ["migrate"]
    result = run_cli(*args, cwd=tmp_path, DATABASE_URL=latin1_db_url, BETTER_AUTH_SECRET=SECRET)
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"database todo_{encoding.lower()},",
        f"encoded in {encoding},",
        "ENCODING 'UTF8'",
    )
    assert "b'" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with psycopg.connect(latin1_db_url) as db:
        assert db.execute("select to_regclass('public.tasks')").fetchone() == (None,)
