"""`todo-api policies`: the isolation audit, its findings, drift from sql/policies/, and --json.

Each test gets a freshly migrated database as the login role todo_owner, which owns the tables, so a
test can weaken the database the way a hand-made change in production would and read the verdict.
"""

import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api.db.sql_files import SQL_DIR
from api.ops import policy_audit
from api.ops.cli import main
from api.ops.policy_audit import audit_database
from tests.support import SECRET, as_role, free_port, run_cli

Conn = psycopg.Connection[tuple[Any, ...]]
RunPolicies = Callable[..., tuple[int, str]]
RunPoliciesWithStderr = Callable[..., tuple[int, str, str]]

TASK_POLICIES = {
    "tasks are visible to their owner",
    "tasks are created by their owner",
    "tasks are changed by their owner",
    "tasks are deleted by their owner",
}
USER_POLICIES = {"users see their own row", "users create their own row", "users update their own row"}
KEY_POLICIES = {
    "idempotency keys are visible to their owner",
    "idempotency keys are stored by their owner",
    "idempotency keys are removed by their owner",
}
EVENT_POLICIES = {
    "task events are visible to their owner",
    "task events are read by the trigger on tasks",
    "task events are written by the trigger on tasks",
    "task events are purged by the trigger on tasks",
    "task events are cleared by the trigger on tasks",
}
EVENT_PURGE_POLICIES = {
    "event purges are visible to their user",
    "event purges are read by the trigger on task_events",
    "event purges are recorded by the trigger on task_events",
    "event purges are raised by the trigger on task_events",
}
# For the migrating role, which the purge of expired keys runs as (sql/policies/idempotency_keys.sql).
PURGE_POLICIES = {
    "expired keys are visible to the purge",
    "expired keys are locked by the purge",
    "expired keys are removed by the purge",
}


@pytest.fixture
def db(migrated_db: Conn) -> Conn:
    migrated_db.autocommit = True
    return migrated_db


@pytest.fixture
def run_policies_with_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> RunPoliciesWithStderr:
    """`todo-api policies ARGS` in this process against a database URL: (exit code, stdout, stderr)."""

    def run(database_url: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.chdir(tmp_path)  # no developer's .env
        for name in ("BETTER_AUTH_URL", "BETTER_AUTH_JWKS_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
        capsys.readouterr()
        try:
            main(["policies", *args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def run_policies(run_policies_with_stderr: RunPoliciesWithStderr) -> RunPolicies:
    """`todo-api policies ARGS` in this process against a database URL: (exit code, stdout)."""

    def run(database_url: str, *args: str) -> tuple[int, str]:
        code, out, _ = run_policies_with_stderr(database_url, *args)
        return code, out

    return run


def findings(database_url: str, policy_files: list[Path] | None = None) -> list[str]:
    return [finding.message for finding in audit_database(database_url, policy_files).findings]


def live_policies(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute(
        "select oid, polname, pg_get_expr(polqual, polrelid) from pg_policy order by oid"
    ).fetchall()


# --- a clean database ------------------------------------------------------------------------------


def test_a_migrated_database_passes(migrated_db_url: str, run_policies: RunPolicies, db: Conn) -> None:
    code, out = run_policies(migrated_db_url)
    assert code == 0, out
    assert "Findings: none." in out
    assert "todo_app (per-request role): NOLOGIN, NOSUPERUSER, NOBYPASSRLS, NOINHERIT" in out
    assert "todo_owner (login role): LOGIN, NOSUPERUSER, BYPASSRLS" in out
    # Since PostgreSQL 16 the role that creates a role is made its admin: todo_owner made todo_login.
    (release,) = db.execute("select current_setting('server_version_num')::int / 10000").fetchone() or (0,)
    admin_of = ", todo_login" if release >= 16 else ""
    assert f"member of: todo_app{admin_of}; can switch to todo_app" in out
    assert "public.tasks (owner todo_owner): RLS enabled, forced; open to todo_app; 4 policies" in out
    assert "public.users (owner todo_owner): RLS enabled, forced; open to todo_app; 3 policies" in out
    for name in TASK_POLICIES | USER_POLICIES:
        assert f'"{name}": PERMISSIVE' in out
    assert '"tasks are changed by their owner": PERMISSIVE UPDATE TO todo_app' in out
    assert "USING      (user_id = ( SELECT app.current_user_id() AS current_user_id))" in out
    assert (
        "table public.tasks: SELECT, INSERT (user_id, title, description, completed), "
        "UPDATE (title, description, completed), DELETE" in out
    )
    assert "table public.users: SELECT, INSERT (id, email, name), UPDATE (email, name)" in out
    assert "function app.current_user_id(): EXECUTE" in out
    assert "schema app: USAGE" in out
    assert "drop_all_policies" not in out.split("Grants to todo_app")[1]


def test_the_audit_changes_nothing(db: Conn, migrated_db_url: str) -> None:
    before = live_policies(db)
    assert findings(migrated_db_url) == []
    # Same oids: the policies the drift check re-created from the files were rolled back.
    assert live_policies(db) == before


def test_the_cli_gates_a_deployment_from_a_real_process(migrated_db_url: str, tmp_path: Path) -> None:
    # run_cli: a process of its own, forked from one that imported the CLI once (tests/cli_forkserver.py).
    clean = run_cli("policies", cwd=tmp_path, DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with psycopg.connect(migrated_db_url, autocommit=True) as connection:
        connection.execute("alter table tasks no force row level security")
    weakened = run_cli("policies", cwd=tmp_path, DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET)
    assert weakened.returncode == 1
    forced = "[isolation] table public.tasks is open to todo_app without row-level security forced"
    assert forced in weakened.stdout
    # A gate must tell findings from an audit that did not run, whose standard output is empty.
    unreachable_url = f"postgresql://todo@127.0.0.1:{free_port()}/todo"
    unreachable = run_cli(
        "policies", "--json", cwd=tmp_path, DATABASE_URL=unreachable_url, BETTER_AUTH_SECRET=SECRET
    )
    assert (unreachable.returncode, unreachable.stdout) == (2, ""), unreachable.stderr
    assert "cannot reach the database" in unreachable.stderr


# --- each kind of finding ----------------------------------------------------------------------------

WEAKENINGS = {
    "rls not forced": (
        ["alter table tasks no force row level security"],
        "table public.tasks is open to todo_app without row-level security forced",
    ),
    "rls disabled": (
        ["alter table users disable row level security"],
        "table public.users is open to todo_app without row-level security enabled",
    ),
    # The system's schemas are named pg_...: pg-boss's pgboss, pgmq's pgmq are a user's, which were
    # left out of the check with every schema whose name starts with pg.
    "rls disabled in a schema whose name starts with pg": (
        [
            "create schema pgboss",
            "create table pgboss.job (id int)",
            "grant usage on schema pgboss to todo_app",
            "grant select on pgboss.job to todo_app",
        ],
        "table pgboss.job is open to todo_app without row-level security enabled",
    ),
    "table without a policy": (
        [
            "create table notes (id int primary key, body text)",
            "alter table notes enable row level security, force row level security",
            "grant select on notes to todo_app",
        ],
        "table public.notes is open to todo_app without a policy for it",
    ),
    "permissive true USING": (
        ['create policy "anyone reads tasks" on tasks for select to todo_app using (true)'],
        'policy "anyone reads tasks" on public.tasks admits every row: USING (true)',
    ),
    "permissive true WITH CHECK, to public": (
        ['create policy "anyone adds users" on users for insert with check (true)'],
        'policy "anyone adds users" on public.users admits every row: WITH CHECK (true)',
    ),
    "policy function without a pinned search_path": (
        [
            "create function app.is_owner(owner text) returns boolean language sql stable "
            "as $$ select owner = app.current_user_id() $$",
            "grant execute on function app.is_owner(text) to todo_app",
            'alter policy "tasks are visible to their owner" on tasks using (app.is_owner(user_id))',
        ],
        'function app.is_owner(text), used by policy "tasks are visible to their owner" on public.tasks, '
        "does not pin its search_path (add SET search_path = '')",
    ),
    "security definer function": (
        [
            "create function public.every_task() returns setof tasks language sql security definer "
            "set search_path = '' as $$ select * from public.tasks $$"
        ],
        "function public.every_task() runs as its owner todo_owner (SECURITY DEFINER)"
        " and todo_app may call it",
    ),
    "view without security_invoker": (
        ["create view every_task as select * from tasks", "grant select on every_task to todo_app"],
        "view public.every_task is open to todo_app without security_invoker,"
        " so it reads as its owner todo_owner",
    ),
    "materialized view": (
        [
            "create materialized view task_count as select count(*) from tasks",
            "grant select on task_count to public",
        ],
        "materialized view public.task_count is open to todo_app,"
        " and materialized views have no row-level security",
    ),
}


@pytest.mark.parametrize(("statements", "expected"), WEAKENINGS.values(), ids=WEAKENINGS.keys())
def test_each_weakening_is_a_finding(
    db: Conn, migrated_db_url: str, run_policies: RunPolicies, statements: list[str], expected: str
) -> None:
    for statement in statements:
        db.execute(statement)
    assert expected in findings(migrated_db_url)
    code, out = run_policies(migrated_db_url)
    assert code == 1
    assert f"  - [isolation] {expected}" in out
    assert "isolation is weakened, do not deploy" in out


@pytest.mark.parametrize(
    "statements",
    [
        ["create view every_task as select * from tasks"],  # todo_app cannot read it
        ["create table audit_log (id int)"],  # todo_app cannot reach it: needs no policy
    ],
    ids=["view todo_app cannot read", "table todo_app cannot reach"],
)
def test_what_todo_app_cannot_reach_is_not_a_finding(
    db: Conn, migrated_db_url: str, statements: list[str]
) -> None:
    for statement in statements:
        db.execute(statement)
    assert findings(migrated_db_url) == []


# Anything todo_app can reach that the package does not ship is a finding, however harmless it
# looks: the catalog cannot tell harmless from harmful. A function todo_app may not call still runs
# for it from a trigger, a rule or another function's body, which the catalog does not follow.
NOT_SHIPPED = {
    "security_invoker view": (
        [
            "create view my_tasks with (security_invoker) as select * from tasks",
            "grant select on my_tasks to todo_app",
        ],
        "view public.my_tasks is not in what todo-api ships (sql/checks/expected_reach.json): "
        "SELECT; security_invoker; definition md5 ",
    ),
    "definer function todo_app cannot call": (
        [
            "create function public.every_task() returns setof tasks language sql security definer "
            "set search_path = '' as $$ select * from public.tasks $$",
            "revoke execute on function public.every_task() from public",
        ],
        "function public.every_task() is not in what todo-api ships (sql/checks/expected_reach.json): "
        "SECURITY DEFINER; todo_app may not call it",
    ),
}


@pytest.mark.parametrize(("statements", "expected"), NOT_SHIPPED.values(), ids=NOT_SHIPPED.keys())
def test_what_todo_app_may_reach_but_is_not_shipped_is_a_finding(
    db: Conn, migrated_db_url: str, statements: list[str], expected: str
) -> None:
    for statement in statements:
        db.execute(statement)
    assert [message for message in findings(migrated_db_url) if message.startswith(expected)]


# What initdb made is judged by its privileges: a grant to todo_app or PUBLIC beyond what it came
# with is a finding. pg_statistic holds sample values of every column, other users' titles included;
# pg_read_file reads the server's files.
GRANTED_BEYOND_POSTGRES_OWN = {
    "a catalog table to todo_app": (
        "grant select on pg_catalog.pg_statistic to todo_app",
        "granted beyond PostgreSQL's own relation pg_catalog.pg_statistic is not in what todo-api ships "
        "(sql/checks/expected_reach.json): SELECT to todo_app",
    ),
    "a catalog table to PUBLIC": (
        "grant select on pg_catalog.pg_statistic to public",
        "granted beyond PostgreSQL's own relation pg_catalog.pg_statistic is not in what todo-api ships "
        "(sql/checks/expected_reach.json): SELECT to PUBLIC",
    ),
    "a system function to todo_app": (
        "grant execute on function pg_catalog.pg_read_file(text) to todo_app",
        "granted beyond PostgreSQL's own function pg_catalog.pg_read_file(text) is not in what todo-api "
        "ships (sql/checks/expected_reach.json): EXECUTE to todo_app",
    ),
}


@pytest.mark.parametrize(
    ("statement", "expected"), GRANTED_BEYOND_POSTGRES_OWN.values(), ids=GRANTED_BEYOND_POSTGRES_OWN.keys()
)
def test_a_grant_on_what_initdb_made_beyond_its_own_is_a_finding(
    migrated_db_url: str, statement: str, expected: str
) -> None:
    with psycopg.connect(as_role(migrated_db_url, "postgres"), autocommit=True) as superuser:
        superuser.execute(statement)
    assert expected in findings(migrated_db_url)


@pytest.fixture
def outsider(db: Conn, migrated_db_url: str) -> Iterator[str]:
    """The database's URL as a login role that is not a member of todo_app (roles are cluster-wide)."""
    name = f"outsider_{secrets.token_hex(4)}"
    db.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        yield migrated_db_url.replace("todo_owner@", f"{name}@", 1)
    finally:
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_a_login_role_that_cannot_switch_to_todo_app_is_a_finding(
    outsider: str, run_policies: RunPolicies
) -> None:
    code, out = run_policies(outsider)
    assert code == 1
    name = outsider.split("@")[0].rsplit("/", 1)[1]
    assert f"  - [isolation] login role {name} cannot switch to todo_app: grant todo_app to it" in out
    assert f"{name} (login role): LOGIN" in out
    assert "CANNOT switch to todo_app" in out
    # It owns nothing, so the policies are compared with what the package ships, not re-created.
    assert f"Login role: {name}, a role that owns nothing and cannot bypass row-level security" in out
    assert "could not compare the live policies" not in out


# --- drift -------------------------------------------------------------------------------------------


def test_a_policy_changed_by_hand_is_drift(db: Conn, migrated_db_url: str, run_policies: RunPolicies) -> None:
    db.execute('alter policy "tasks are deleted by their owner" on tasks using (user_id is not null)')
    code, out = run_policies(migrated_db_url)
    assert code == 1
    assert (
        '  - [drift] policy "tasks are deleted by their owner" on public.tasks differs from '
        "sql/policies/tasks.sql: USING is `(user_id IS NOT NULL)` live but "
        "`(user_id = ( SELECT app.current_user_id() AS current_user_id))` in the file" in out
    )
    # The audit reported the change and left it in place.
    expression = db.execute(
        "select qual from pg_policies where policyname = 'tasks are deleted by their owner'"
    ).fetchone()
    assert expression == ("(user_id IS NOT NULL)",)


def test_a_with_check_loosened_by_hand_is_drift_that_says_what_differs(
    db: Conn, migrated_db_url: str
) -> None:
    """WITH CHECK is what stops a user writing rows in another's name. An operator told of drift must
    read what changed and what the file wants, to judge and put it back: the finding named the policy
    and then said nothing after "differs from sql/policies/idempotency_keys.sql:"."""
    db.execute(
        'alter policy "idempotency keys are stored by their owner" on idempotency_keys'
        " with check (user_id = (select app.current_user_id()) or true)"
    )
    assert findings(migrated_db_url) == [
        'policy "idempotency keys are stored by their owner" on public.idempotency_keys differs from '
        "sql/policies/idempotency_keys.sql: WITH CHECK is "
        "`((user_id = ( SELECT app.current_user_id() AS current_user_id)) OR true)` live but "
        "`(user_id = ( SELECT app.current_user_id() AS current_user_id))` in the file"
    ]


def test_a_role_changed_by_hand_is_drift(db: Conn, migrated_db_url: str) -> None:
    db.execute('alter policy "users see their own row" on users to public')
    assert findings(migrated_db_url) == [
        'policy "users see their own row" on public.users differs from sql/policies/users.sql: '
        "roles is `public` live but `todo_app` in the file"
    ]


def test_a_policy_dropped_by_hand_is_drift(db: Conn, migrated_db_url: str) -> None:
    db.execute('drop policy "tasks are deleted by their owner" on tasks')
    assert findings(migrated_db_url) == [
        'policy "tasks are deleted by their owner" on public.tasks is in sql/policies/tasks.sql '
        "but not live: apply it (todo-api migrate)"
    ]


def test_a_policy_added_by_hand_is_drift(db: Conn, migrated_db_url: str) -> None:
    db.execute(
        """create policy "tasks are visible to support" on tasks as restrictive for select to todo_app
           using (title <> '')"""
    )
    assert findings(migrated_db_url) == [
        'policy "tasks are visible to support" on public.tasks is live but not in sql/policies/tasks.sql: '
        "it was created by hand, or its file changed and is not yet applied"
    ]


def test_a_superuser_that_does_not_own_the_tables_compares_as_their_owner(
    db: Conn, migrated_db_url: str, run_policies: RunPolicies
) -> None:
    """Read as postgres, the files' TO CURRENT_USER named postgres, not the tables' owner: false
    drift on a healthy database, and blindness to the trigger policies handed to postgres."""
    as_superuser = as_role(migrated_db_url, "postgres")
    before = live_policies(db)
    code, out = run_policies(as_superuser)
    assert code == 0, out
    assert "Findings: none." in out
    assert live_policies(db) == before, "nothing was changed, nor left owned by someone else"

    db.execute('alter policy "task events are read by the trigger on tasks" on task_events to postgres')
    assert findings(as_superuser) == [
        'policy "task events are read by the trigger on tasks" on public.task_events differs from '
        "sql/policies/task_events.sql: roles is `postgres` live but `todo_owner` in the file"
    ]


@pytest.fixture
def policy_files(tmp_path: Path) -> Path:
    """A copy of sql/policies/ to change, as a developer would before running migrate."""
    folder = tmp_path / "policies"
    shutil.copytree(SQL_DIR / "policies", folder)
    return folder


def test_a_changed_file_not_yet_applied_is_drift(migrated_db_url: str, policy_files: Path) -> None:
    tasks = policy_files / "tasks.sql"
    tasks.write_text(
        tasks.read_text(encoding="utf-8").replace(
            '"tasks are deleted by their owner"', '"tasks are removed by their owner"'
        ),
        encoding="utf-8",
    )
    files = sorted(policy_files.glob("*.sql"))
    assert findings(migrated_db_url, files) == [
        'policy "tasks are deleted by their owner" on public.tasks is live but not in '
        f"{tasks}: it was created by hand, or its file changed and is not yet applied",
        f'policy "tasks are removed by their owner" on public.tasks is in {tasks} but not live: '
        "apply it (todo-api migrate)",
    ]


def test_a_new_file_not_yet_applied_is_drift(db: Conn, migrated_db_url: str, policy_files: Path) -> None:
    db.execute("create table notes (id int primary key, user_id text not null)")
    notes = policy_files / "notes.sql"
    notes.write_text(
        "CALL app.drop_all_policies('public.notes');\n"
        'CREATE POLICY "notes are visible to their owner" ON public.notes\n'
        "    FOR SELECT TO todo_app USING (user_id = (SELECT app.current_user_id()));\n",
        encoding="utf-8",
    )
    assert findings(migrated_db_url, sorted(policy_files.glob("*.sql"))) == [
        f'policy "notes are visible to their owner" on public.notes is in {notes} but not live: '
        "apply it (todo-api migrate)"
    ]


def test_the_drift_check_does_not_queue_behind_a_long_transaction(
    db: Conn, migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_audit, "LOCK_TIMEOUT", "200ms")
    with psycopg.connect(migrated_db_url) as busy:
        busy.execute("select from tasks")  # holds ACCESS SHARE until this transaction ends
        assert findings(migrated_db_url) == [
            "could not compare the live policies with sql/policies/: canceling statement due to lock timeout"
        ]


def test_a_lock_held_on_tasks_ends_the_audit_unrun_within_the_lock_timeout_naming_its_holder(
    db: Conn,
    migrated_db_url: str,
    run_policies_with_stderr: RunPoliciesWithStderr,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The policies' expressions are read with pg_get_expr, which waits for any lock on their table:
    the whole audit, not the drift check alone, gives up after LOCK_TIMEOUT, and says so. It has no
    report to print: exit 2 and nothing on standard output, never the 1 of a report's findings, which
    a deployment gate reading the JSON then found empty."""
    # The lock is held throughout, so any timeout ends the audit: its length (5 s) is not what is tested.
    monkeypatch.setattr(policy_audit, "LOCK_TIMEOUT", "200ms")
    before = live_policies(db)
    with psycopg.connect(f"{migrated_db_url}&application_name=busy-migration") as busy:
        # A ceiling only a hang reaches, now that the audit runs in this process: an audit that waited
        # for the lock would be let through once the holder's session ends, and report.
        busy.execute("set idle_in_transaction_session_timeout = '60s'")
        busy.execute("lock table tasks in access exclusive mode")
        code, out, err = run_policies_with_stderr(migrated_db_url, "--json")
        holder = busy.info.backend_pid
    assert (code, out) == (2, ""), err
    (line,) = err.strip().splitlines()
    for text in ("the audit could not complete", "lock_timeout", f"pid {holder}", "busy-migration"):
        assert text in line, line
    assert live_policies(db) == before, "the audit changed nothing"


@pytest.mark.parametrize("catalog", ["pg_policy", "pg_class"])
def test_a_catalog_the_login_role_may_not_read_ends_the_audit_unrun_in_one_line(
    db: Conn, migrated_db_url: str, run_policies_with_stderr: RunPoliciesWithStderr, catalog: str
) -> None:
    """A DBA's REVOKE on a catalog printed a traceback and exited 1, a deployment gate's "isolation is
    weakened", with nothing on standard output; `serve` refused the same database in one line."""
    table = sql.Identifier("pg_catalog", catalog)
    with psycopg.connect(as_role(migrated_db_url, "postgres"), autocommit=True) as superuser:
        superuser.execute(sql.SQL("revoke select on {} from public").format(table))
        try:
            for args in ((), ("--json",)):
                code, out, err = run_policies_with_stderr(migrated_db_url, *args)
                assert (code, out) == (2, ""), err
                assert "Traceback" not in err
                (line,) = err.strip().splitlines()
                refused = f"InsufficientPrivilege: permission denied for table {catalog}"
                assert f"the audit could not complete ({refused})" in line
                assert "grant that role back what was revoked" in line
        finally:
            superuser.execute(sql.SQL("grant select on {} to public").format(table))


# --- JSON ----------------------------------------------------------------------------------------------


def test_json_is_the_same_audit_for_machines(
    db: Conn, migrated_db_url: str, run_policies: RunPolicies
) -> None:
    code, out = run_policies(migrated_db_url, "--json")
    assert code == 0
    clean = json.loads(out)
    assert clean["ok"] is True
    assert clean["findings"] == []
    assert clean["login_role"] == "todo_owner"
    assert {table["name"]: (table["rls_enabled"], table["rls_forced"]) for table in clean["tables"]}[
        "public.tasks"
    ] == (True, True)
    assert {policy["name"] for policy in clean["policies"]} == (
        TASK_POLICIES | USER_POLICIES | KEY_POLICIES | EVENT_POLICIES | EVENT_PURGE_POLICIES | PURGE_POLICIES
    )
    select = next(p for p in clean["policies"] if p["name"] == "tasks are visible to their owner")
    assert select == {
        "table_name": "public.tasks",
        "name": "tasks are visible to their owner",
        "kind": "PERMISSIVE",
        "command": "SELECT",
        "roles": ["todo_app"],
        "using_expression": "(user_id = ( SELECT app.current_user_id() AS current_user_id))",
        "with_check_expression": None,
    }
    todo_app = next(role for role in clean["roles"] if role["name"] == "todo_app")
    assert (todo_app["superuser"], todo_app["bypassrls"], todo_app["can_login"]) == (False, False, False)
    assert {
        "object_type": "table",
        "object": "public.users",
        "privilege": "UPDATE",
        "columns": "email, name",
    } in (clean["grants"])

    db.execute('alter policy "tasks are visible to their owner" on tasks using (true)')
    code, out = run_policies(migrated_db_url, "--json")
    assert code == 1
    weakened = json.loads(out)
    assert weakened["ok"] is False
    assert weakened["findings"] == [
        {
            "kind": "isolation",
            "message": 'policy "tasks are visible to their owner" on public.tasks'
            " admits every row: USING (true)",
            "table": None,
            "policy": None,
        },
        {
            "kind": "drift",
            "message": 'policy "tasks are visible to their owner" on public.tasks differs from '
            "sql/policies/tasks.sql: USING is `true` live but "
            "`(user_id = ( SELECT app.current_user_id() AS current_user_id))` in the file",
            "table": "public.tasks",
            "policy": "tasks are visible to their owner",
        },
    ]
    _, text_out = run_policies(migrated_db_url)
    for finding in weakened["findings"]:
        assert f"  - [{finding['kind']}] {finding['message']}" in text_out


def _skip_before_maintain(db: Conn) -> None:
    """On a release before PostgreSQL 17 there is no MAINTAIN to grant (docs/operations.md, "Postgres
    releases": the tests also run on 15 and 16)."""
    version = db.execute("select current_setting('server_version_num')::int").fetchone()
    if version is not None and version[0] < 170000:
        pytest.skip("MAINTAIN is new in PostgreSQL 17")


@pytest.mark.parametrize("privilege", ["truncate", "references", "trigger", "maintain"])
def test_a_table_todo_app_may_only_truncate_reference_trigger_or_maintain_is_shown_open_to_it(
    db: Conn, migrated_db_url: str, privilege: str
) -> None:
    """sql/audit/tables.sql says whether todo_app can reach a table at all, and counted SELECT, INSERT,
    UPDATE and DELETE only: a table todo_app may TRUNCATE (which row-level security does not govern),
    point a foreign key at, put a trigger on or LOCK (MAINTAIN), was listed "not open to todo_app"
    beside the isolation check's finding about it."""
    if privilege == "maintain":
        _skip_before_maintain(db)
    db.execute("create table audit_log (id int primary key)")
    db.execute(sql.SQL("grant {} on audit_log to todo_app").format(sql.SQL(privilege)))

    audit = audit_database(migrated_db_url)

    (table,) = [table for table in audit.tables if table.name == "public.audit_log"]
    assert table.open_to_todo_app
    assert findings(migrated_db_url)


def test_the_grants_to_todo_app_list_maintain(db: Conn, migrated_db_url: str) -> None:
    """MAINTAIN (PostgreSQL 17 on) lets todo_app LOCK a table in any mode, VACUUM and REINDEX it. The
    isolation check reports it; the list of grants that `todo-api policies` prints beside it did not
    show it."""
    _skip_before_maintain(db)
    db.execute("grant maintain on tasks to todo_app")

    audit = audit_database(migrated_db_url)

    assert ("table", "public.tasks", "MAINTAIN") in [
        (g.object_type, g.object, g.privilege) for g in audit.grants
    ]
    assert findings(migrated_db_url)
