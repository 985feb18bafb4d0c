"""Row-level security, proved in SQL with no HTTP in between.

Each test gets a freshly migrated database and a connection as the login role todo_owner, which,
like Neon's neondb_owner, has BYPASSRLS. Identities are switched exactly as the API does it, inside
a transaction: set_config('role', 'todo_app', true) and set_config('app.user_id', <id>, true).
"""

import asyncio
import secrets
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.abc import Params
from pytest_postgresql.executors import NoopExecutor

from api.db.sql_files import SQL_DIR
from api.ops.startup_checks import check_database
from tests.conftest import url_for
from tests.support import ACT_AS, as_role, settings_for

ALICE = "aliceAAAAAAAAAAAAAAAAAAAAAAAAAAA"
BOB = "bobBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
RLS_VIOLATION = "new row violates row-level security policy"

ACT_AS_NOBODY = "select set_config('role', 'todo_app', true)"

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def db(migrated_db: Conn) -> Conn:
    """The login role, in autocommit, with one task each for Alice and Bob (seeded past RLS)."""
    migrated_db.autocommit = True
    migrated_db.execute(
        "insert into users (id, email, name) values (%s, 'alice@example.com', 'Alice'), (%s, null, 'Bob')",
        (ALICE, BOB),
    )
    migrated_db.execute(
        "insert into tasks (user_id, title) values (%s, 'alice task'), (%s, 'bob task')", (ALICE, BOB)
    )
    return migrated_db


def task_id(db: Conn, user_id: str) -> int:
    row = db.execute("select id from tasks where user_id = %s", (user_id,)).fetchone()
    assert row is not None
    return int(row[0])


def as_user(db: Conn, user_id: str | None, statement: str, params: Params = ()) -> psycopg.Cursor[Any]:
    """Run one statement in its own transaction as todo_app, acting for user_id (None: nobody)."""
    with db.transaction():
        if user_id is None:
            db.execute(ACT_AS_NOBODY)
        else:
            db.execute(ACT_AS, (user_id,))
        return db.execute(statement, params)


def assert_refused(error: pytest.ExceptionInfo[errors.InsufficientPrivilege], message: str) -> None:
    assert error.value.sqlstate == "42501"
    assert message in (error.value.diag.message_primary or "")


# --- nobody: no app.user_id, or an empty one -------------------------------------------------------


@pytest.mark.parametrize("user_id", [None, ""], ids=["unset", "empty"])
@pytest.mark.parametrize("table", ["users", "tasks"])
def test_nobody_sees_no_rows(db: Conn, user_id: str | None, table: str) -> None:
    assert as_user(db, user_id, f"select count(*) from {table}").fetchone() == (0,)  # noqa: S608


@pytest.mark.parametrize("user_id", [None, ""], ids=["unset", "empty"])
def test_nobody_can_insert(db: Conn, user_id: str | None) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, user_id, "insert into users (id) values ('mallory')")
    assert_refused(refused, RLS_VIOLATION)
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, user_id, "insert into tasks (user_id, title) values (%s, 'sneaky')", (ALICE,))
    assert_refused(refused, RLS_VIOLATION)
    assert db.execute("select count(*) from tasks").fetchone() == (2,)


def test_nobody_after_a_previous_transaction_set_a_user(db: Conn) -> None:
    """On a pooled connection the setting reads '' after a transaction that set it: still nobody."""
    as_user(db, ALICE, "select 1")
    assert as_user(db, None, "select count(*) from tasks").fetchone() == (0,)
    assert as_user(db, None, "update tasks set completed = true").rowcount == 0


# --- another user's rows ---------------------------------------------------------------------------


def test_cannot_read_another_users_rows(db: Conn) -> None:
    bob_task = task_id(db, BOB)
    assert as_user(db, ALICE, "select id from tasks where id = %s", (bob_task,)).fetchall() == []
    assert as_user(db, ALICE, "select user_id, title from tasks").fetchall() == [(ALICE, "alice task")]
    assert as_user(db, ALICE, "select id from users where id = %s", (BOB,)).fetchall() == []
    assert as_user(db, ALICE, "select id from users").fetchall() == [(ALICE,)]


def test_cannot_insert_a_task_for_another_user(db: Conn) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, ALICE, "insert into tasks (user_id, title) values (%s, 'planted')", (BOB,))
    assert_refused(refused, RLS_VIOLATION)
    assert db.execute("select count(*) from tasks where title = 'planted'").fetchone() == (0,)


def test_cannot_create_another_users_row(db: Conn) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, ALICE, "insert into users (id, name) values ('carol', 'Carol')")
    assert_refused(refused, RLS_VIOLATION)
    assert db.execute("select count(*) from users where id = 'carol'").fetchone() == (0,)


def test_cannot_update_another_users_task(db: Conn) -> None:
    bob_task = task_id(db, BOB)
    pwn = "update tasks set title = 'pwned', completed = true where id = %s"
    assert as_user(db, ALICE, pwn, (bob_task,)).rowcount == 0
    bob_row = db.execute("select title, completed from tasks where id = %s", (bob_task,)).fetchone()
    assert bob_row == ("bob task", False)


def test_cannot_delete_another_users_task(db: Conn) -> None:
    bob_task = task_id(db, BOB)
    assert as_user(db, ALICE, "delete from tasks where id = %s", (bob_task,)).rowcount == 0
    assert as_user(db, ALICE, "delete from tasks where user_id = %s", (BOB,)).rowcount == 0
    assert db.execute("select count(*) from tasks where id = %s", (bob_task,)).fetchone() == (1,)


def test_cannot_update_another_users_row(db: Conn) -> None:
    assert as_user(db, ALICE, "update users set name = 'pwned' where id = %s", (BOB,)).rowcount == 0
    assert db.execute("select name from users where id = %s", (BOB,)).fetchone() == ("Bob",)


# --- one's own rows --------------------------------------------------------------------------------


def test_owner_reads_inserts_updates_and_deletes_own_tasks(db: Conn) -> None:
    create = "insert into tasks (user_id, title) values (%s, 'new') returning id, user_id"
    new_id, owner = as_user(db, ALICE, create, (ALICE,)).fetchone() or (None, None)
    assert owner == ALICE
    titles = as_user(db, ALICE, "select title from tasks order by id").fetchall()
    assert titles == [("alice task",), ("new",)]
    rename = "update tasks set title = 'renamed', completed = true where id = %s"
    assert as_user(db, ALICE, rename, (new_id,)).rowcount == 1
    renamed = db.execute("select title, completed from tasks where id = %s", (new_id,)).fetchone()
    assert renamed == ("renamed", True)
    assert as_user(db, ALICE, "delete from tasks where id = %s", (new_id,)).rowcount == 1
    assert db.execute("select count(*) from tasks where id = %s", (new_id,)).fetchone() == (0,)


def test_owner_creates_reads_and_updates_own_users_row(db: Conn) -> None:
    carol = "carolCCCCCCCCCCCCCCCCCCCCCCCCCCC"
    as_user(db, carol, "insert into users (id, email, name) values (%s, 'c@example.com', 'Carol')", (carol,))
    assert as_user(db, carol, "select id, name from users").fetchall() == [(carol, "Carol")]
    assert as_user(db, carol, "update users set name = 'Caroline' where id = %s", (carol,)).rowcount == 1
    assert db.execute("select name from users where id = %s", (carol,)).fetchone() == ("Caroline",)


# --- column privileges: ids, owners and timestamps belong to the database -------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "update tasks set user_id = %(other)s",
        "update tasks set id = default",
        "update tasks set created_at = now() - interval '1 year'",
        "update tasks set updated_at = now() - interval '1 year'",
        "update users set id = 'renamed'",
        "update users set created_at = now() - interval '1 year'",
        "insert into tasks (id, user_id, title) overriding system value values (999999, %(me)s, 'x')",
        "insert into tasks (user_id, title, created_at) values (%(me)s, 'x', now())",
        "insert into tasks (user_id, title, updated_at) values (%(me)s, 'x', now())",
        "delete from users",
    ],
)
def test_column_and_table_privileges_refuse(db: Conn, statement: str) -> None:
    before = db.execute("select id, user_id, title, created_at, updated_at from tasks order by id").fetchall()
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, ALICE, statement, {"me": ALICE, "other": BOB})
    assert_refused(refused, "permission denied for table")
    after = db.execute("select id, user_id, title, created_at, updated_at from tasks order by id").fetchall()
    assert after == before
    assert db.execute("select count(*) from users").fetchone() == (2,)


def test_cannot_move_own_task_to_another_user(db: Conn) -> None:
    alice_task = task_id(db, ALICE)
    with pytest.raises(errors.InsufficientPrivilege) as refused:
        as_user(db, ALICE, "update tasks set user_id = %s where id = %s", (BOB, alice_task))
    assert_refused(refused, "permission denied for table tasks")
    assert db.execute("select user_id from tasks where id = %s", (alice_task,)).fetchone() == (ALICE,)


# --- the settings last one transaction -------------------------------------------------------------

WHO = "select current_user::text, current_setting('app.user_id', true)"


def assert_back_to_login_role(db: Conn) -> None:
    who, user_id = db.execute(WHO).fetchone() or (None, None)
    assert who == "todo_owner"
    assert user_id in ("", None)


def test_settings_apply_inside_the_transaction_only(db: Conn) -> None:
    assert as_user(db, ALICE, WHO).fetchone() == ("todo_app", ALICE)
    assert_back_to_login_role(db)


def test_settings_vanish_after_rollback(db: Conn) -> None:
    with db.transaction(force_rollback=True):
        db.execute(ACT_AS, (ALICE,))
        assert db.execute(WHO).fetchone() == ("todo_app", ALICE)
    assert_back_to_login_role(db)


def test_settings_vanish_after_an_error(db: Conn) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        as_user(db, ALICE, "delete from users")
    assert_back_to_login_role(db)


# --- the catalog: roles, RLS flags, policies -------------------------------------------------------

EXPOSED_TABLES = r"""
    select c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p')
      and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
      and (has_table_privilege('todo_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
           or has_any_column_privilege('todo_app', c.oid, 'SELECT, INSERT, UPDATE'))
    order by 1
"""

# For each exposed table and command todo_app may run on it, whether some policy TO todo_app (or
# PUBLIC) covers that command.
POLICY_PER_COMMAND = r"""
    select c.oid::regclass::text, cmd,
           exists (select from pg_policies p
                   where p.schemaname = n.nspname and p.tablename = c.relname
                     and p.cmd in (cmd, 'ALL') and p.roles && array['todo_app', 'public']::name[])
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) as cmd
    where c.relkind in ('r', 'p')
      and n.nspname <> 'information_schema' and n.nspname not like 'pg\_%'
      and (has_table_privilege('todo_app', c.oid, cmd)
           or (cmd <> 'DELETE' and has_any_column_privilege('todo_app', c.oid, cmd)))
    order by 1, 2
"""


def test_every_table_open_to_todo_app_has_rls_enabled_and_forced(db: Conn) -> None:
    assert db.execute(EXPOSED_TABLES).fetchall() == [
        ("idempotency_keys", True, True),
        ("task_event_purges", True, True),
        ("task_events", True, True),
        ("tasks", True, True),
        ("users", True, True),
    ]


def test_every_granted_command_has_a_policy_to_todo_app(db: Conn) -> None:
    rows = db.execute(POLICY_PER_COMMAND).fetchall()
    assert [(table, cmd) for table, cmd, _ in rows] == [
        ("idempotency_keys", "DELETE"),
        ("idempotency_keys", "INSERT"),
        ("idempotency_keys", "SELECT"),
        ("task_event_purges", "SELECT"),
        ("task_events", "SELECT"),
        ("tasks", "DELETE"),
        ("tasks", "INSERT"),
        ("tasks", "SELECT"),
        ("tasks", "UPDATE"),
        ("users", "INSERT"),
        ("users", "SELECT"),
        ("users", "UPDATE"),
    ]
    assert [(table, cmd) for table, cmd, covered in rows if not covered] == []


def test_todo_app_cannot_log_in_or_bypass_rls(db: Conn) -> None:
    role = db.execute(
        "select rolcanlogin, rolsuper, rolbypassrls from pg_roles where rolname = 'todo_app'"
    ).fetchone()
    assert role == (False, False, False)


# --- sql/checks/isolation.sql ----------------------------------------------------------------------


def isolation_findings(db: Conn) -> list[str]:
    check = (SQL_DIR / "checks" / "isolation.sql").read_text(encoding="utf-8")
    return [finding for (finding,) in db.execute(check).fetchall()]


def test_isolation_check_is_clean_on_a_migrated_database(db: Conn) -> None:
    assert isolation_findings(db) == []


def test_isolation_check_reports_rls_not_forced(db: Conn) -> None:
    db.execute("alter table tasks no force row level security")
    assert isolation_findings(db) == ["table tasks is open to todo_app without row-level security forced"]


def test_isolation_check_reports_rls_disabled(db: Conn) -> None:
    db.execute("alter table users disable row level security")
    assert isolation_findings(db) == ["table users is open to todo_app without row-level security enabled"]


@pytest.mark.parametrize(
    "grant", ["grant select on notes to todo_app", "grant update (body) on notes to todo_app"]
)
def test_isolation_check_reports_a_new_table_without_rls(db: Conn, grant: str) -> None:
    db.execute("create table notes (id int generated always as identity primary key, body text)")
    db.execute(grant)
    assert sorted(isolation_findings(db)) == [
        "table notes is open to todo_app without a policy for it",
        "table notes is open to todo_app without row-level security enabled",
        "table notes is open to todo_app without row-level security forced",
    ]


def test_isolation_check_reports_a_table_with_rls_but_no_policy(db: Conn) -> None:
    db.execute("create table notes (id int generated always as identity primary key)")
    db.execute("alter table notes enable row level security, force row level security")
    db.execute("grant select on notes to public")
    assert isolation_findings(db) == ["table notes is open to todo_app without a policy for it"]


# --- a role of the DBA's own: reports, support staff (docs/operations.md) ---------------------------

POLICED_TABLES = ["users", "tasks", "idempotency_keys", "task_events", "task_event_purges"]


def test_a_role_for_reports_reads_no_row_until_a_superuser_lets_it_bypass_row_level_security(
    db: Conn, migrated_db_url: str, migrated_template: NoopExecutor
) -> None:
    """docs/operations.md, "Reading the data by hand": a role given SELECT on every table, and
    pg_read_all_data, reads no row the policies guard, silently, or is refused with row_security off;
    with BYPASSRLS it reads every user's. Neither is an isolation finding: serve starts all the same."""
    reports = f"reports_{secrets.token_hex(4)}"
    superuser_url = url_for(migrated_template, db.info.dbname, user="postgres")
    login_url = as_role(migrated_db_url)
    grants = [
        "grant usage on schema public, app to {}",
        "grant select on all tables in schema public, app to {}",
    ]
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(
            sql.SQL("create role {} login in role pg_read_all_data").format(sql.Identifier(reports))
        )
        try:
            for grant in grants:
                db.execute(sql.SQL(grant).format(sql.Identifier(reports)))  # as the tables' owner
            with psycopg.connect(as_role(migrated_db_url, reports), autocommit=True) as reader:
                counts = [
                    reader.execute(
                        sql.SQL("select count(*) from {}").format(sql.Identifier("public", table))
                    ).fetchone()
                    for table in POLICED_TABLES
                ]
                assert counts == [(0,)] * len(POLICED_TABLES)
                assert reader.execute("select count(*) from app.task_counts").fetchone() == (2,)
                reader.execute("set row_security = off")
                with pytest.raises(errors.InsufficientPrivilege) as refused:
                    reader.execute("select count(*) from public.tasks")
                assert_refused(refused, "query would be affected by row-level security policy")
            asyncio.run(check_database(login_url, settings_for(login_url), workers=1))

            superuser.execute(sql.SQL("alter role {} bypassrls").format(sql.Identifier(reports)))
            with psycopg.connect(as_role(migrated_db_url, reports), autocommit=True) as reader:
                titles = reader.execute("select user_id, title from public.tasks order by 1").fetchall()
                assert titles == [(ALICE, "alice task"), (BOB, "bob task")]
            asyncio.run(check_database(login_url, settings_for(login_url), workers=1))
        finally:
            # Its grants first (DROP OWNED revokes them), for a role outlives the test's database.
            superuser.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reports)))
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(reports)))
