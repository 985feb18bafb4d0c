"""`todo-api serve` on a database of another release refuses in one line that names the fix: a
database a migration behind says to migrate, one a newer release migrated says to serve that release
(docs/operations.md, "Upgrading a fleet, and rolling back"). Until the last migrate recorded its newest
migration (sql/mark_newest_migration.sql), serve listed every difference the other release's schema
makes (function bodies, triggers, policies), the command to run last, after them.

The other release is this one's sql/ folder with its newest migration taken away, or one added, applied
with plain yoyo as that release's `todo-api migrate` would, in a cluster where the session's migrated
template made the API's login role (`migrated_template`)."""

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor

from api.app import create_app
from api.db.sql_files import SQL_DIR, shipped_migrations
from api.db.urls import libpq_url, yoyo_url
from tests.api.events_client import async_client, opened
from tests.support import (
    PROJECT,
    SECRET,
    as_role,
    assert_problem,
    cli_env,
    new_user,
    refusal,
    run_cli,
    serve_command,
    serve_process,
    serving,
    serving_client,
    settings_for,
)
from tests.test_isolation_watch import INTERVAL, eventually_logged

NEWEST = shipped_migrations()[-1]
BEFORE_NEWEST = shipped_migrations()[-2]


def _release_with(tmp_path: Path, *, without_newest: bool = False, newer: str | None = None) -> Path:
    """Another release's migrations: this one's, without its newest, or with `newer` after it."""
    sql = tmp_path / "release" / "sql"
    shutil.copytree(SQL_DIR, sql)
    if without_newest:
        for path in sql.glob(f"migrations/{NEWEST}*.sql"):
            path.unlink()
    if newer is not None:
        (sql / "migrations" / "0999_newer_release.sql").write_text(
            f"-- depends: {NEWEST}\n{newer}", encoding="utf-8"
        )
    return sql / "migrations"


def _yoyo(command: str, migrations: Path, database_url: str, *options: str) -> None:
    yoyo = [str(PROJECT / ".venv" / "bin" / "yoyo"), command, "--no-config-file", "--batch", *options]
    result = subprocess.run(
        [*yoyo, "--database", yoyo_url(database_url), str(migrations)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _migrate_as_that_release(migrations: Path, database_url: str) -> None:
    _yoyo("apply", migrations, database_url)


def _the_one_line(stderr: str) -> str:
    (line,) = stderr.strip().splitlines()
    return line


def test_serve_on_a_database_a_migration_behind_says_in_one_line_to_migrate(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    _migrate_as_that_release(_release_with(tmp_path, without_newest=True), empty_db_url)

    line = _the_one_line(refusal(as_role(empty_db_url), tmp_path))
    assert f"the database is migrated up to {BEFORE_NEWEST}" in line, line
    assert f"this release also needs {NEWEST}" in line, line
    assert "run `todo-api migrate` with this release" in line, line

    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=empty_db_url)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert NEWEST in migrated.stdout + migrated.stderr
    audited = run_cli("policies", cwd=tmp_path, DATABASE_URL=empty_db_url)
    assert audited.returncode == 0, audited.stdout + audited.stderr


# A newer release's migration that changes what the isolation check reads, and nothing todo_app reaches.
_NEWER_FUNCTION = (
    "CREATE FUNCTION app.newer_release() RETURNS integer LANGUAGE sql IMMUTABLE\n"
    "    SET search_path = '' AS 'SELECT 1';\n"
    "REVOKE EXECUTE ON FUNCTION app.newer_release() FROM PUBLIC;\n"
)


def test_serve_on_a_database_a_newer_release_migrated_says_in_one_line_to_serve_that_release(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    _migrate_as_that_release(_release_with(tmp_path, newer=_NEWER_FUNCTION), empty_db_url)

    line = _the_one_line(refusal(as_role(empty_db_url), tmp_path))
    assert "the database was migrated by a newer release (up to 0999_newer_release;" in line, line
    assert f"this release ships up to {NEWEST}" in line, line
    assert "serve that release" in line, line


def test_serve_after_a_rollback_says_where_the_database_is(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    """A migration rolled back as docs/operations.md says (plain `yoyo rollback`, which runs no hook)
    left the record naming it: serve, as the schema's owner (the embedded database's one role, and many
    Neon deployments'), listed every difference the rollback made instead of saying to migrate. yoyo's
    own table, which the owner may read, is right after a rollback."""
    _migrate_as_that_release(SQL_DIR / "migrations", empty_db_url)
    _yoyo("rollback", SQL_DIR / "migrations", empty_db_url, "--revision", NEWEST)

    line = _the_one_line(refusal(empty_db_url, tmp_path))
    assert f"the database is migrated up to {BEFORE_NEWEST}" in line, line
    assert f"this release also needs {NEWEST}" in line, line
    # Only "run migrate" read as if the rollback had been a mistake to undo.
    assert f"rolled back on purpose, serve the release that ships up to {BEFORE_NEWEST}" in line, line


def test_a_running_server_whose_migration_is_rolled_back_logs_where_the_database_is(
    migrated_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other way round: this release's newest migration rolled back under it with plain yoyo, as
    docs/operations.md says, while it serves as the schema's owner (the embedded database's way)."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=INTERVAL)
    with (
        caplog.at_level(logging.ERROR, logger="api.db.isolation"),
        serving_client(create_app(settings)) as api,
    ):
        _yoyo("rollback", SQL_DIR / "migrations", migrated_db_url, "--revision", NEWEST)
        eventually_logged(
            caplog,
            f"the database is migrated up to {BEFORE_NEWEST}, and this release also needs {NEWEST}",
            "the running check's one line after the rollback",
        )
        assert_problem(api.get("/readyz"), 503, "isolation-unverified")


def test_serve_on_a_database_of_this_release_changed_by_hand_lists_each_difference(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """The record says this release: what differs was changed by hand, and each difference is news."""
    _migrate_as_that_release(SQL_DIR / "migrations", migrated_db_url)
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        owner.execute(
            "CREATE FUNCTION app.made_by_hand() RETURNS integer LANGUAGE sql IMMUTABLE SET search_path = '' "
            "AS 'SELECT 1'"
        )
    stderr = refusal(as_role(migrated_db_url), tmp_path)
    assert "app.made_by_hand()" in stderr, stderr
    assert "migrated up to" not in stderr, stderr
    assert "newer release" not in stderr, stderr


def test_a_running_server_a_newer_release_migrated_under_logs_the_one_line_serve_gives(
    migrated_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade: the newer release migrates while this one serves. Its isolation check then
    refuses every task request, and logged the raw differences (here a function's md5) where an
    operator needs the diagnosis start-up gives: which release, and what to do."""
    alice = new_user()
    settings = settings_for(as_role(migrated_db_url), isolation_check_interval_seconds=INTERVAL)
    with (
        caplog.at_level(logging.ERROR, logger="api.db.isolation"),
        serving_client(create_app(settings)) as api,
    ):
        assert api.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).status_code == 201

        _migrate_as_that_release(_release_with(tmp_path, newer=_NEWER_FUNCTION), migrated_db_url)

        eventually_logged(
            caplog,
            "the database was migrated by a newer release (up to 0999_newer_release;",
            "the running check's one line after the newer release migrated",
        )
        assert_problem(api.get(alice.tasks_url, headers=alice.headers), 503, "isolation-unverified")
        assert_problem(api.get("/readyz"), 503, "isolation-unverified")

    line = caplog.records[-1].getMessage()
    assert line.startswith("isolation is not verified; task requests are refused until it is: "), line
    assert f"this release ships up to {NEWEST}" in line, line
    assert "serve that release" in line, line
    assert "app.newer_release()" not in line, line


def test_an_open_stream_ends_once_a_newer_release_migrated_so_that_its_client_moves_to_that_release(
    migrated_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In a rolling upgrade done as docs/operations.md says, a balancer takes the older instances out
    by /readyz, but their open streams stayed on them, reading nothing, for as long as they ran: each
    user missed every change made on the newer release meanwhile (the deploys probe of stop 81). At
    the next wake-up such a stream now ends, and its client reconnects to an instance that serves."""
    alice = new_user()
    settings = settings_for(as_role(migrated_db_url), isolation_check_interval_seconds=INTERVAL)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            await asyncio.to_thread(
                _migrate_as_that_release, _release_with(tmp_path, newer=_NEWER_FUNCTION), migrated_db_url
            )
            await asyncio.to_thread(
                eventually_logged,
                caplog,
                "the database was migrated by a newer release",
                "the running check's verdict after the newer release migrated",
            )
            # A write the newer release serves (here its owner's INSERT, which wakes streams too).
            with psycopg.connect(migrated_db_url, autocommit=True) as owner:
                owner.execute("insert into public.users (id) values (%s)", [alice.id])
                owner.execute(
                    "insert into public.tasks (user_id, title) values (%s, 'on the newer')", [alice.id]
                )
            rest = await stream.end()
            assert [block for block in rest if block.data] == [], "the stream ended, sending nothing"

    with caplog.at_level(logging.ERROR, logger="api.db.isolation"), serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))


def test_migrate_applies_what_is_pending_over_a_migration_of_no_release_that_sorts_before_its_newest(
    empty_db_url: str, tmp_path: Path
) -> None:
    """A migration none of this release's, recorded as the newest applied but sorting before this
    release's newest (a hotfix of the operator's own, between two releases), is no newer release's:
    called one, migrate refused to apply what was pending, and no test said otherwise (the mutation
    probe of stop 81)."""
    _migrate_as_that_release(_release_with(tmp_path, without_newest=True), empty_db_url)
    hotfix = f"{BEFORE_NEWEST}_hotfix"
    assert BEFORE_NEWEST < hotfix < NEWEST
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute(
            "insert into _yoyo_migration (migration_hash, migration_id, applied_at_utc)"
            " values (md5(%s), %s, now())",
            [hotfix, hotfix],
        )

    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=empty_db_url)

    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert f"migrations applied: {NEWEST}" in migrated.stdout, migrated.stdout


def test_migrate_on_a_database_a_newer_release_migrated_refuses_and_changes_nothing(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    """An older release's migrate (a `serve --migrate` restarted mid-way through a rolling upgrade)
    found nothing pending, refreshed the policies with its own over the newer release's schema, and
    then called the newer release's function a change made by hand."""
    _migrate_as_that_release(_release_with(tmp_path, newer=_NEWER_FUNCTION), empty_db_url)
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as owner:
        owner.execute('drop policy "tasks are deleted by their owner" on tasks')

    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=empty_db_url)

    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert migrated.stdout == ""
    line = _the_one_line(migrated.stderr)
    assert line.startswith("todo-api: refusing to migrate: the database was migrated by a newer release "), (
        line
    )
    assert f"(up to 0999_newer_release; this release ships up to {NEWEST})" in line, line
    assert line.endswith("; nothing was changed"), line
    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        policies = owner.execute(
            "select policyname::text from pg_policies where tablename = 'tasks'"
        ).fetchall()
    assert ("tasks are deleted by their owner",) not in policies, "the policies were not refreshed"


def test_serve_with_migrate_leaves_a_newer_releases_database_as_it_is_and_serves_it_while_it_can(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    """An older release's instance restarted mid-way through a rolling upgrade, with `--migrate`: it
    changes nothing, and serves while what todo_app reaches is what it expects (a newer release that
    changed no policy and no grant), rather than fail to start."""
    _migrate_as_that_release(
        _release_with(tmp_path, newer="COMMENT ON TABLE public.tasks IS 'a newer release was here';\n"),
        empty_db_url,
    )
    env = cli_env(
        DATABASE_URL=as_role(empty_db_url), MIGRATION_DATABASE_URL=empty_db_url, BETTER_AUTH_SECRET=SECRET
    )
    user = new_user()
    log = tmp_path / "serve.log"
    with (
        serve_process(serve_command(env, "--migrate"), cwd=tmp_path, env=env, output=log) as (base_url, _),
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        assert client.post(user.tasks_url, headers=user.headers, json={"title": "served"}).status_code == 201

    said = log.read_text(encoding="utf-8")
    assert "not migrating: the database was migrated by a newer release (up to 0999_newer_release)" in said, (
        said
    )
    with psycopg.connect(libpq_url(empty_db_url)) as owner:
        newest = owner.execute("select max(migration_id) from _yoyo_migration").fetchone()
        comment = owner.execute("select obj_description('public.tasks'::regclass)").fetchone()
    assert (newest, comment) == (("0999_newer_release",), ("a newer release was here",))
