"""Serving as a login role that owns nothing (LOGIN NOINHERIT NOBYPASSRLS, member of todo_app only),
migrating as the owner through MIGRATION_DATABASE_URL, and saying which kind of login role is in use."""

import json
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import NoopExecutor

from api.app import create_app
from api.ops.policy_audit import audit_database
from tests.own_postgres import OwnPostgres
from tests.support import (
    API_LOGIN_ROLE,
    CLI,
    LOGIN_ROLE,
    SECRET,
    as_role,
    ask_for_passwords,
    assert_problem,
    cli_env,
    new_user,
    run_cli,
    serve_process,
    serving,
    serving_client,
    settings_for,
)

Conn = psycopg.Connection[tuple[Any, ...]]


def test_migrate_creates_the_login_role_and_the_api_serves_through_it(
    migrated_db: Conn, migrated_db_url: str, fresh_role: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = run_cli("migrate", "--login-role", fresh_role, cwd=tmp_path, DATABASE_URL=migrated_db_url)
    assert result.returncode == 0, result.stderr
    assert f"login role {fresh_role}: LOGIN NOINHERIT NOBYPASSRLS, owns nothing, member of todo_app" in (
        result.stdout
    )
    attributes = migrated_db.execute(
        """select rolcanlogin, rolinherit, rolbypassrls, rolsuper, rolcreaterole, rolcreatedb,
                  array(select b.rolname::text from pg_auth_members m join pg_roles b on b.oid = m.roleid
                        where m.member = r.oid)
           from pg_roles r where rolname = %s""",
        [fresh_role],
    ).fetchone()
    assert attributes == (True, False, False, False, False, False, ["todo_app"])

    url = as_role(migrated_db_url, fresh_role)
    alice, bob = new_user(), new_user()
    with (
        caplog.at_level(logging.WARNING, logger="api.db.isolation"),
        serving_client(create_app(settings_for(url))) as api,
    ):
        created = api.post(alice.tasks_url, json={"title": "mine"}, headers=alice.headers)
        assert created.status_code == 201
        listed = api.get(alice.tasks_url, headers=alice.headers)
        assert [task["title"] for task in listed.json()] == ["mine"]
        assert api.get(bob.task_url(created.json()["id"]), headers=bob.headers).status_code == 404
        assert api.get("/readyz").status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # Outside the role switch it reads nothing at all.
    with psycopg.connect(url) as login, pytest.raises(psycopg.errors.InsufficientPrivilege):
        login.execute("select count(*) from tasks")


def test_the_password_advice_for_a_new_login_role_runs_as_written(
    migrated_db: Conn, migrated_db_url: str, fresh_role: str, tmp_path: Path
) -> None:
    """A name with a hyphen was advised bare, `ALTER ROLE todo-login PASSWORD '...'`: a syntax error."""
    name = fresh_role.replace("_", "-")
    try:
        result = run_cli("migrate", "--login-role", name, cwd=tmp_path, DATABASE_URL=migrated_db_url)
        assert result.returncode == 0, result.stderr
        (advice,) = re.findall(r"\((ALTER ROLE .* PASSWORD) '\.\.\.'\)", result.stdout)
        migrated_db.execute(f"{advice} 'a-new-password'")  # as the owner that made the role, as advised
    finally:
        migrated_db.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_start_up_warns_once_when_serving_as_the_owner(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="api.db.isolation"),
        serving(create_app(settings_for(migrated_db_url))),
    ):
        pass
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "the API logs in as todo_owner, the schema's owner, with BYPASSRLS" in warnings[0]
    assert "todo-api migrate --login-role NAME" in warnings[0]


def test_serve_warns_of_the_owner_whatever_its_environment_says_of_the_embedded_database(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """Only the embedded development database is told to its workers as logged in to by its owner
    (api/ops/server.py): a variable of that name inherited by a deployment's serve silences nothing."""
    log = tmp_path / "serve.log"
    env = cli_env(DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET, TODO_API_EMBEDDED_DATABASE="1")
    with serve_process([*CLI, "serve"], cwd=tmp_path, env=env, output=log):
        pass
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warned = [record["message"] for record in records if record["level"] == "WARNING"]
    assert any("the API logs in as todo_owner" in message for message in warned), warned


def test_policies_says_which_kind_of_login_role(migrated_db_url: str) -> None:
    owner = audit_database(migrated_db_url)
    assert owner.login_role_kind == "the schema's owner, with BYPASSRLS"
    assert owner.login_role_warning is not None
    least = audit_database(as_role(migrated_db_url))
    assert least.login_role == API_LOGIN_ROLE
    assert least.login_role_kind == "a role that owns nothing and cannot bypass row-level security"
    assert least.login_role_warning is None
    assert least.findings == []


def test_policies_prints_the_kind_and_the_warning(migrated_db_url: str, tmp_path: Path) -> None:
    owner = run_cli("policies", cwd=tmp_path, DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET)
    assert owner.returncode == 0, owner.stdout
    assert "Login role: todo_owner, the schema's owner, with BYPASSRLS" in owner.stdout
    assert "WARNING: the API logs in as todo_owner" in owner.stdout
    least = run_cli(
        "policies", cwd=tmp_path, DATABASE_URL=as_role(migrated_db_url), BETTER_AUTH_SECRET=SECRET
    )
    assert least.returncode == 0, least.stdout
    assert f"Login role: {API_LOGIN_ROLE}, a role that owns nothing" in least.stdout
    assert "WARNING" not in least.stdout


def test_migrate_runs_as_migration_database_url(
    empty_db_url: str, tmp_path: Path, migrated_template: NoopExecutor
) -> None:
    """(The migrated template made the API's login role: roles belong to the cluster.)"""
    served = as_role(empty_db_url)
    refused = run_cli("migrate", cwd=tmp_path, DATABASE_URL=served)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert f"{API_LOGIN_ROLE} may not change the schema" in refused.stderr
    assert "MIGRATION_DATABASE_URL" in refused.stderr

    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=served, MIGRATION_DATABASE_URL=empty_db_url)
    assert result.returncode == 0, result.stderr
    assert "0006_drop_isolation_baseline" in result.stdout
    assert audit_database(served).findings == []


def _role_state(db: Conn, name: str) -> tuple[Any, ...] | None:
    """A role's attributes and the roles it belongs to: what --login-role could have changed."""
    return db.execute(
        """select rolcanlogin, rolinherit, rolbypassrls, rolsuper, rolpassword is not null,
                  array(select b.rolname::text from pg_auth_members m join pg_roles b on b.oid = m.roleid
                        where m.member = r.oid order by 1)
           from pg_authid r where rolname = %s""",
        [name],
    ).fetchone()


@contextmanager
def _role_with_bypassrls(superuser_url: str) -> Iterator[str]:
    # Made by the superuser: before PostgreSQL 16 no other role may create one with BYPASSRLS.
    name = f"todo_bypass_{secrets.token_hex(4)}"
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create role {} login bypassrls").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture
def bypassrls_role(superuser_url: str) -> Iterator[str]:
    with _role_with_bypassrls(superuser_url) as name:
        yield name


@pytest.fixture
def own_cluster(module_postgres: OwnPostgres) -> Iterator[OwnPostgres]:
    """The module's own cluster, for the tests whose role may become todo_app in a way the isolation
    check reports (INHERIT, or a member of more than todo_app): on the session's cluster, a shared app
    checking then refused every request until its next check. Its owner bypasses row-level security
    while the test runs, as the session cluster's does (conftest's `postgres_server`)."""
    owner = sql.Identifier(LOGIN_ROLE)
    with psycopg.connect(module_postgres.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("alter role {} bypassrls").format(owner))
        try:
            yield module_postgres
        finally:
            superuser.execute(sql.SQL("alter role {} nobypassrls").format(owner))


@pytest.fixture
def own_fresh_role(own_cluster: OwnPostgres) -> Iterator[str]:
    """`fresh_role` on `own_cluster`: a name for a login role that does not exist yet, dropped afterwards."""
    name = f"todo_login_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(own_cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("postgres", "is a superuser", id="superuser"),
        pytest.param("todo_owner", "owns", id="schema-owner"),
        pytest.param("todo_app", "is todo_app itself", id="todo_app"),
        pytest.param(None, "has BYPASSRLS", id="bypassrls"),
    ],
)
def test_login_role_refuses_an_existing_role_that_could_read_past_the_policies(
    superuser_url: str,
    migrated_db_url: str,
    bypassrls_role: str,
    tmp_path: Path,
    name: str | None,
    why: str,
) -> None:
    """Such a role was left as it was while migrate printed "NOBYPASSRLS, owns nothing": false."""
    name = name or bypassrls_role
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        before = _role_state(superuser, name)
        result = run_cli("migrate", "--login-role", name, cwd=tmp_path, DATABASE_URL=migrated_db_url)
        after = _role_state(superuser, name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"refusing --login-role {name}: it " in result.stderr
    assert f"it {why}" in result.stderr
    assert "Name a new role" in result.stderr
    assert "owns nothing" not in result.stdout
    assert after == before, "nothing about the role was changed"


@pytest.mark.parametrize(
    ("granted", "why"),
    [
        pytest.param("todo_owner", "BYPASSRLS, owns the tables", id="the-owner"),
        pytest.param("postgres", "a superuser, BYPASSRLS", id="a-superuser"),
        pytest.param(None, "BYPASSRLS", id="a-bypassrls-role"),
        pytest.param("pg_read_all_data", "reads every table", id="pg_read_all_data"),
    ],
)
def test_a_login_role_that_may_become_a_role_past_the_policies_is_warned_of_and_refused_by_migrate(
    own_cluster: OwnPostgres, tmp_path: Path, granted: str | None, why: str
) -> None:
    """A login role that owns nothing and inherits nothing, but is a member of such a role, was said to
    "own nothing and not bypass row-level security", with no warning: a statement outside the API's
    role switch may still `SET ROLE` to that role, then lift FORCE or read past the policies (or, as
    pg_read_all_data, read what the app schema keeps of every user)."""
    name = f"todo_login_{secrets.token_hex(4)}"
    with (
        psycopg.connect(own_cluster.superuser_url, autocommit=True) as superuser,
        _role_with_bypassrls(own_cluster.superuser_url) as bypassrls_role,
    ):
        granted = granted or bypassrls_role
        superuser.execute(
            sql.SQL("create role {} login noinherit in role todo_app, {}").format(
                sql.Identifier(name), sql.Identifier(granted)
            )
        )
        try:
            audit = audit_database(as_role(own_cluster.url, name))
            before = _role_state(superuser, name)
            result = run_cli("migrate", "--login-role", name, cwd=tmp_path, DATABASE_URL=own_cluster.url)
            after = _role_state(superuser, name)
        finally:
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
    assert audit.login_role_kind == f"a role that owns nothing but may become {granted} ({why})"
    assert audit.login_role_warning is not None
    assert f"the API logs in as {name}, a role that owns nothing but may become {granted}" in (
        audit.login_role_warning
    )
    assert audit.findings == [], "a warning, as serving as the owner is"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"refusing --login-role {name}: it may become {granted}, which " in result.stderr
    assert after == before, "nothing about the role was changed"


def test_login_role_says_what_an_existing_role_is(
    own_cluster: OwnPostgres, own_fresh_role: str, tmp_path: Path
) -> None:
    """An existing role is left as it is (but for todo_app): the line says what it is, not the recipe."""
    with psycopg.connect(own_cluster.url, autocommit=True) as owner:
        owner.execute(sql.SQL("create role {} login inherit").format(sql.Identifier(own_fresh_role)))
    result = run_cli("migrate", "--login-role", own_fresh_role, cwd=tmp_path, DATABASE_URL=own_cluster.url)
    assert result.returncode == 0, result.stderr
    assert (
        f"login role {own_fresh_role} (it existed, and keeps its attributes): LOGIN INHERIT NOBYPASSRLS, "
        "owns nothing, member of todo_app" in result.stdout
    )


def test_login_role_names_a_membership_granted_twice_once(
    own_cluster: OwnPostgres, own_fresh_role: str, tmp_path: Path
) -> None:
    """Since PostgreSQL 16 one membership may be granted by several grantors, one row each: granted by
    migrate (as the owner) and again by a superuser, it was "member of todo_app, todo_app"."""
    first = run_cli("migrate", "--login-role", own_fresh_role, cwd=tmp_path, DATABASE_URL=own_cluster.url)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(own_cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("grant todo_app to {}").format(sql.Identifier(own_fresh_role)))
        grants = superuser.execute(
            "select count(*) from pg_auth_members where member = %s::regrole", [own_fresh_role]
        ).fetchone()
    assert grants == (2,), "two grants of todo_app, by two grantors"
    again = run_cli("migrate", "--login-role", own_fresh_role, cwd=tmp_path, DATABASE_URL=own_cluster.url)
    assert again.returncode == 0, again.stderr
    assert "NOBYPASSRLS, owns nothing, member of todo_app; give it a password" in again.stdout, again.stdout


def test_login_role_says_that_an_existing_role_is_given_database_urls_password(
    own_cluster: OwnPostgres, own_fresh_role: str, tmp_path: Path
) -> None:
    """It used to say the role "keeps its attributes" while its password was replaced."""
    fresh_role, migrated_db_url = own_fresh_role, own_cluster.url
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        owner.execute(
            sql.SQL("create role {} login inherit connection limit 7 password 'its-own-password'").format(
                sql.Identifier(fresh_role)
            )
        )
    state = "select rolpassword, rolinherit, rolconnlimit from pg_authid where rolname = %s"
    with psycopg.connect(own_cluster.superuser_url, autocommit=True) as superuser:
        before = superuser.execute(state, [fresh_role]).fetchone()
        served = as_role(migrated_db_url, f"{fresh_role}:new-password-from-database-url")
        result = run_cli(
            "migrate", "--login-role", fresh_role, cwd=tmp_path,
            DATABASE_URL=served, MIGRATION_DATABASE_URL=migrated_db_url,
        )  # fmt: skip
        after = superuser.execute(state, [fresh_role]).fetchone()
    assert result.returncode == 0, result.stderr
    assert (
        f"login role {fresh_role} (it existed, and keeps every attribute but its password): LOGIN INHERIT "
        "NOBYPASSRLS, owns nothing, member of todo_app; its password is now DATABASE_URL's" in result.stdout
    )
    assert before is not None
    assert after is not None
    assert after[0] != before[0], "the password was replaced"
    assert after[1:] == before[1:] == (True, 7), "the other attributes were kept"


def test_an_empty_login_role_is_refused_before_anything_runs(empty_db_url: str, tmp_path: Path) -> None:
    result = run_cli("migrate", "--login-role", "", cwd=tmp_path, DATABASE_URL=empty_db_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--login-role: a role name cannot be empty or white space alone" in result.stderr
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regclass('public.tasks')").fetchone() == (None,), "nothing migrated"


_LONG_NAME = "todo_login_" + "x" * 59  # 70 bytes: Postgres would keep the first 63


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("pg_monitor", "it starts with pg_", id="built-in-role"),
        pytest.param("public", "it is a name SQL reserves", id="public"),
        pytest.param("PUBLIC", "it is a name SQL reserves", id="public-upper-case"),
        pytest.param("current_user", "it is a name SQL reserves", id="current_user"),
        pytest.param("session_user", "it is a name SQL reserves", id="session_user"),
        pytest.param("none", "it is a name SQL reserves", id="none"),
        pytest.param(_LONG_NAME, "it is 70 bytes long", id="over-63-bytes"),
        # A byte the locale cannot decode: a UnicodeEncodeError traceback.
        pytest.param("todo_\udcff", "it is not UTF-8 text", id="not-utf-8"),
        # Made as typed: a role no DATABASE_URL names unless it percent-encodes the space.
        pytest.param(" todo_login", "it begins or ends with whitespace", id="leading-space"),
        pytest.param("todo_login\t", "it begins or ends with whitespace", id="trailing-tab"),
        pytest.param("todo\nlogin", "it begins or ends with whitespace, or holds a control", id="newline"),
    ],
)
def test_login_role_refuses_a_name_no_role_could_fit_before_anything_runs(
    superuser_url: str, empty_db_url: str, tmp_path: Path, name: str, why: str
) -> None:
    """pg_monitor was made a member of todo_app (every monitoring login one step from any user's rows),
    public was "a migration failed (ReservedName)", and a 70-byte name was cut to 63 bytes while the
    advice named all 70."""
    roles = (
        "select rolname, array(select m.member from pg_auth_members m where m.roleid = r.oid) from pg_roles r"
    )
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        before = superuser.execute(roles).fetchall()
        result = run_cli("migrate", "--login-role", name, cwd=tmp_path, DATABASE_URL=empty_db_url)
        after = superuser.execute(roles).fetchall()
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert f"refusing --login-role {name!a}: {why}" in result.stderr  # quoted, escaped
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert after == before, "no role was created, and none was granted anything"
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regclass('public.tasks')").fetchone() == (None,), "nothing migrated"


def test_login_role_takes_a_name_of_63_bytes_the_longest_postgres_keeps_whole(
    migrated_db: Conn, migrated_db_url: str, fresh_role: str, tmp_path: Path
) -> None:
    """Postgres keeps a role's name whole up to 63 bytes (NAMEDATALEN - 1): an operator's name of
    exactly 63 must make the role by that name, which DATABASE_URL then logs in as. Refused as if
    Postgres would cut it, migrate failed on a name that fits."""
    name = f"{fresh_role}_" + "l" * (62 - len(fresh_role))
    assert len(name.encode()) == 63
    try:
        result = run_cli("migrate", "--login-role", name, cwd=tmp_path, DATABASE_URL=migrated_db_url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"login role {name}: LOGIN NOINHERIT NOBYPASSRLS, owns nothing, member of todo_app" in (
            result.stdout
        )
        with psycopg.connect(as_role(migrated_db_url, name)) as login:
            assert login.execute("select current_user").fetchone() == (name,)
    finally:
        migrated_db.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_login_role_refuses_an_existing_role_that_cannot_log_in(
    superuser_url: str, migrated_db: Conn, migrated_db_url: str, fresh_role: str, tmp_path: Path
) -> None:
    """A group role (pg_monitor's kind) was granted todo_app, and `todo-api policies` then failed:
    whoever was, or was later made, its member could act as any user."""
    member = f"{fresh_role}_member"
    migrated_db.execute(sql.SQL("create role {} nologin").format(sql.Identifier(fresh_role)))
    migrated_db.execute(
        sql.SQL("create role {} login in role {}").format(sql.Identifier(member), sql.Identifier(fresh_role))
    )
    try:
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            before = [_role_state(superuser, fresh_role), _role_state(superuser, member)]
            result = run_cli(
                "migrate", "--login-role", fresh_role, cwd=tmp_path, DATABASE_URL=migrated_db_url
            )
            after = [_role_state(superuser, fresh_role), _role_state(superuser, member)]
    finally:
        migrated_db.execute(sql.SQL("drop role {}").format(sql.Identifier(member)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "Traceback" not in result.stderr
    assert f"refusing --login-role {fresh_role}: it cannot log in (NOLOGIN)" in result.stderr
    assert "member of todo_app" not in result.stdout
    assert after == before, "todo_app was granted to nobody"


def test_a_login_roles_password_changed_while_serving_is_taken_up_by_a_restart_or_a_second_role(
    superuser_url: str, migrated_db: Conn, migrated_db_url: str, tmp_path: Path
) -> None:
    """docs/operations.md, "Changing the login role's password", as written: the new password ends no
    session, so the API serves on until it needs a new connection, which the old password no longer
    opens (a 503 that changes nothing); a restart with the new URL serves again; and a second login
    role, made the same way, serves beside the first with no finding, until the first is dropped."""
    current, succeeding = (f"todo_login_{secrets.token_hex(4)}" for _ in range(2))
    ask_for_passwords(superuser_url, current, succeeding)

    def url(role: str, password: str) -> str:
        return as_role(migrated_db_url, f"{role}:{password}")

    def migrate_login_role(role: str, password: str) -> None:
        owner_and_login = {"MIGRATION_DATABASE_URL": migrated_db_url, "DATABASE_URL": url(role, password)}
        result = run_cli("migrate", "--login-role", role, cwd=tmp_path, **owner_and_login)
        assert result.returncode == 0, result.stderr
        assert "its password is now DATABASE_URL's" in result.stdout

    alice = new_user()
    migrated_db.autocommit = True
    try:
        migrate_login_role(current, "the-first-password")
        quick = {"db_pool_timeout_seconds": 1}
        with serving_client(create_app(settings_for(url(current, "the-first-password"), **quick))) as api:
            created = api.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers)
            assert created.status_code == 201

            migrate_login_role(current, "the-second-password")
            assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200

            # Its sessions ended, as a database restart ends them: the old password opens no other.
            with psycopg.connect(superuser_url, autocommit=True) as superuser:
                superuser.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", [current]
                )
            refused = api.post(alice.tasks_url, json={"title": "after"}, headers=alice.headers)
            assert_problem(refused, 503, "database-unavailable")
            assert api.get("/readyz").status_code == 503

        titles = "select title from tasks where user_id = %s"
        assert migrated_db.execute(titles, [alice.id]).fetchall() == [("before",)]
        with serving_client(create_app(settings_for(url(current, "the-second-password")))) as api:
            assert [task["title"] for task in api.get(alice.tasks_url, headers=alice.headers).json()] == [
                "before"
            ]

            migrate_login_role(succeeding, "the-third-password")
            with serving_client(create_app(settings_for(url(succeeding, "the-third-password")))) as next_api:
                assert next_api.get("/readyz").status_code == 200
                assert api.get("/readyz").status_code == 200
                listed = next_api.get(alice.tasks_url, headers=alice.headers)
                assert [task["title"] for task in listed.json()] == ["before"]

        migrated_db.execute(sql.SQL("drop role {}").format(sql.Identifier(current)))
        served = url(succeeding, "the-third-password")
        audited = run_cli("policies", cwd=tmp_path, DATABASE_URL=served, BETTER_AUTH_SECRET=SECRET)
        assert audited.returncode == 0, audited.stdout + audited.stderr
    finally:
        for role in (current, succeeding):
            migrated_db.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
