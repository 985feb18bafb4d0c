"""Every way of widening what todo_app reaches that the isolation check used to miss is caught
three times: `todo-api serve` refuses to start, `todo-api policies` reports it, and a running API
refuses task requests within a check interval, then serves again once it is undone.

The cases change cluster-wide roles and settings and need a superuser, so they run on a cluster of
their own.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from api.db.sql_files import SQL_DIR
from api.ops.policy_audit import audit_database
from tests.own_postgres import OwnPostgres
from tests.support import (
    LOGIN_ROLE,
    SECRET,
    as_role,
    assert_problem,
    new_user,
    refusal,
    run_cli,
    scrape,
    serving_client,
    settings_for,
    value,
    wait_until,
)
from tests.test_isolation_watch import CHECKS_SECONDS, INTERVAL, refused


@dataclass(frozen=True)
class BlindSpot:
    weaken: list[str]
    undo: list[str]
    finding: str  # the start of one finding's message
    kind: str = "drift"  # compared with what todo-api ships, or found by sql/checks/isolation.sql
    listed: str | None = None  # a line `todo-api policies` shows beside its findings


_DEFINER_TRIGGER = """
create function public.rename_others() returns trigger language plpgsql security definer
set search_path = '' as $$
begin
    update public.tasks set title = 'renamed' where user_id <> new.user_id;
    return null;
end $$"""
_EVERY_TASK = "returns setof public.tasks language sql security definer as $$ select * from public.tasks $$"

# A prepared statement's generic plan then bakes in the first caller's id, for everyone after. The
# role that migrates owns the function: no superuser needed.
_AS_OWNER = "set role todo_owner"
_IMMUTABLE_IDENTITY = [_AS_OWNER, "alter function app.current_user_id() immutable"]
_STABLE_IDENTITY = "alter function app.current_user_id() stable"
# Nor to own a trusted extension and make anything of its own a member, which the check used to take
# for the extension's own objects. The API compares `tasks.user_id = $1::VARCHAR`; an exact
# (text, varchar) match in public wins over pg_catalog's text = text, so that = now means <>.
_EQUALS_MEANS_NOT_EQUALS = [
    _AS_OWNER,
    "create extension citext",
    "create function public.todo_ne(text, varchar) returns boolean language sql immutable "
    "as 'select $1 operator(pg_catalog.<>) $2::text'",
    "alter extension citext add function public.todo_ne(text, varchar)",
    "create operator public.= (leftarg = text, rightarg = varchar, function = public.todo_ne)",
    "alter extension citext add operator public.= (text, varchar)",
]

BLIND_SPOTS = {
    "a rule on tasks": BlindSpot(
        [
            "create table public.spy (title text)",
            'create rule "spy on updates" as on update to public.tasks do also '
            "insert into public.spy values (new.title)",
        ],
        ['drop rule "spy on updates" on public.tasks', "drop table public.spy"],
        'rule public.tasks "spy on updates" is not in what todo-api ships',
    ),
    "a security definer trigger function nobody may call": BlindSpot(
        [
            _DEFINER_TRIGGER,
            "revoke execute on function public.rename_others() from public",
            "create trigger rename_others after insert on public.tasks "
            "for each row execute function public.rename_others()",
        ],
        ["drop trigger rename_others on public.tasks", "drop function public.rename_others()"],
        'trigger public.tasks "rename_others" is not in what todo-api ships',
    ),
    "a view over tasks in information_schema": BlindSpot(
        [
            "create view information_schema.every_task as select * from public.tasks",
            "grant select on information_schema.every_task to public",
        ],
        ["drop view information_schema.every_task"],
        "view information_schema.every_task is not in what todo-api ships",
    ),
    "a security definer function in pg_catalog": BlindSpot(
        [f"create function pg_catalog.every_task() {_EVERY_TASK}"],
        ["drop function pg_catalog.every_task()"],
        "function pg_catalog.every_task() is not in what todo-api ships",
    ),
    "a security definer function in information_schema": BlindSpot(
        [f"create function information_schema.every_task() {_EVERY_TASK}"],
        ["drop function information_schema.every_task()"],
        "function information_schema.every_task() is not in what todo-api ships",
    ),
    "the identity function made immutable": BlindSpot(
        _IMMUTABLE_IDENTITY,
        [_STABLE_IDENTITY],
        "function app.current_user_id() differs from what todo-api ships: "
        "it is SECURITY INVOKER; todo_app may call it; IMMUTABLE",
    ),
    "an operator = that means <>, claimed by a trusted extension": BlindSpot(
        _EQUALS_MEANS_NOT_EQUALS,
        ["drop extension citext"],
        "operator public.=(text, character varying) is not in what todo-api ships",
    ),
    # On user_id, a nondeterministic collation (ICU's und-u-ks-level2) would make the policies' = admit
    # 'ALICE' to alice's rows: the policies dropped, the column altered, `todo-api migrate` applies
    # them again unchanged. The wheel's Postgres has no ICU; a libc collation shows the same object.
    "a collation made after initdb": BlindSpot(
        ["create collation public.user_ids (provider = libc, locale = 'C')"],
        ["drop collation public.user_ids"],
        "collation public.user_ids is not in what todo-api ships",
    ),
    "a foreign table granted to todo_app, claimed by its extension": BlindSpot(
        [
            "create extension postgres_fdw",
            "create server elsewhere foreign data wrapper postgres_fdw options (dbname 'todo')",
            "create foreign table public.remote_tasks (id bigint, user_id text, title text) "
            "server elsewhere options (table_name 'tasks')",
            "grant select on public.remote_tasks to todo_app",
            # Adding it records its grants as the extension's initial ones, as if it shipped them.
            "alter extension postgres_fdw add foreign table public.remote_tasks",
        ],
        ["drop extension postgres_fdw cascade"],
        "foreign table public.remote_tasks is not in what todo-api ships",
    ),
    "todo_app a member of pg_read_all_data": BlindSpot(
        ["grant pg_read_all_data to todo_app"],
        ["revoke pg_read_all_data from todo_app"],
        "membership todo_app in pg_read_all_data is not in what todo-api ships",
    ),
    "todo_app a member of the superuser": BlindSpot(
        ["grant postgres to todo_app"],
        ["revoke postgres from todo_app"],
        "membership todo_app in postgres is not in what todo-api ships",
    ),
    # An owner may alter what it owns whatever its privileges say: todo_app could then make the identity
    # IMMUTABLE, or give it a SET of app.user_id, and every request would read as one user. todo_app
    # may call it either way, so nothing else about the function changes.
    "the identity function owned by todo_app": BlindSpot(
        ["alter function app.current_user_id() owner to todo_app"],
        [
            "alter function app.current_user_id() owner to todo_owner",
            "grant execute on function app.current_user_id() to todo_app",
        ],
        "owned by todo_app function app.current_user_id() is not in what todo-api ships",
    ),
    # Any role could make a schema named todo_app, which comes first on every request's search_path
    # ("$user", public): a table todo_app.tasks in it would take every user's writes.
    "schemas anyone may make in the database": BlindSpot(
        ["grant create on database todo to public"],
        ["revoke create on database todo from public"],
        "database (this database) is not in what todo-api ships",
    ),
    "a large object PUBLIC may read": BlindSpot(
        [
            "select pg_catalog.lo_from_bytea(424242, 'a copy of every task')",
            "grant select on large object 424242 to public",
        ],
        ["select pg_catalog.lo_unlink(424242)"],
        "large object 424242 is not in what todo-api ships",
    ),
    # A grant to todo_app itself, which every task request's role has: a mutant the tests let live
    # looked at grants to PUBLIC alone (the mutation round of stop 84).
    "a large object todo_app may read": BlindSpot(
        [
            "select pg_catalog.lo_from_bytea(434343, 'a copy of every task')",
            "grant select on large object 434343 to todo_app",
        ],
        ["select pg_catalog.lo_unlink(434343)"],
        "large object 434343 is not in what todo-api ships",
    ),
    "future tables granted to todo_app": BlindSpot(
        ["alter default privileges for role todo_owner grant select on tables to todo_app"],
        ["alter default privileges for role todo_owner revoke select on tables from todo_app"],
        "default privileges on future tables in every schema is not in what todo-api ships",
    ),
    "future functions granted to PUBLIC": BlindSpot(
        [
            "alter default privileges for role todo_owner in schema public "
            "grant execute on functions to public"
        ],
        [
            "alter default privileges for role todo_owner in schema public "
            "revoke execute on functions from public"
        ],
        "default privileges on future functions in schema public is not in what todo-api ships",
    ),
    # Unique checks see every row: a conflict on what a user writes tells them another stored it.
    "a unique index on what a user writes": BlindSpot(
        ["create unique index tasks_title_unique on public.tasks (description)"],
        ["drop index public.tasks_title_unique"],
        "unique index tasks_title_unique on public.tasks starts with description, not the owner",
        "isolation",
    ),
    "an exclusion constraint on what a user writes": BlindSpot(
        ["alter table public.tasks add constraint one_title exclude using btree (title with =)"],
        ["alter table public.tasks drop constraint one_title"],
        "exclusion constraint one_title on public.tasks starts with title, not the owner",
        "isolation",
    ),
    # Foreign-key checks see every row too: a task whose description is another user's id was stored,
    # and one naming nobody was refused (a 500), so any user could tell which ids exist.
    "a foreign key from what a user writes": BlindSpot(
        [
            "alter table public.tasks add constraint description_names_a_user "
            "foreign key (description) references public.users (id) not valid"
        ],
        ["alter table public.tasks drop constraint description_names_a_user"],
        "foreign key description_names_a_user on public.tasks starts with description and references "
        "public.users (id), not the owner",
        "isolation",
    ),
    "row_security off for the login role": BlindSpot(
        ["alter role todo_owner in database todo set row_security = off"],
        ["alter role todo_owner in database todo reset row_security"],
        "setting row_security=off applies to the login role todo_owner through "
        "ALTER ROLE todo_owner IN DATABASE todo SET",
        "isolation",
    ),
    # Triggers off: no event written, no quota kept (the mutation probe's A04: only the cluster-wide
    # form was held, and the audit missed this one with the setting's name dropped from its check).
    "session_replication_role replica for the login role": BlindSpot(
        ["alter role todo_owner in database todo set session_replication_role = replica"],
        ["alter role todo_owner in database todo reset session_replication_role"],
        "setting session_replication_role=replica applies to the login role todo_owner through "
        "ALTER ROLE todo_owner IN DATABASE todo SET",
        "isolation",
    ),
    # A transaction as todo_app that did not set app.user_id then saw that user's rows, not none.
    "app.user_id for the database": BlindSpot(
        ["alter database todo set app.user_id = 'someone'"],
        ["alter database todo reset app.user_id"],
        "setting app.user_id=someone applies to the login role todo_owner through ALTER DATABASE todo SET",
        "isolation",
    ),
    # Every large object open to every role: only the cluster-wide form was held, and a mutant the tests
    # let live reported this one nowhere (the mutation round of stop 84).
    "lo_compat_privileges on for the login role": BlindSpot(
        ["alter role todo_owner set lo_compat_privileges = on"],
        ["alter role todo_owner reset lo_compat_privileges"],
        "setting lo_compat_privileges=on applies to the login role todo_owner through ALTER ROLE todo_owner "
        "SET: it changes how row-level security applies or what names mean (ALTER ROLE todo_owner RESET "
        "lo_compat_privileges)",
        "isolation",
    ),
    "a search_path for the database": BlindSpot(
        ["alter database todo set search_path = public"],
        ["alter database todo reset search_path"],
        "setting search_path=public applies to the login role todo_owner through ALTER DATABASE todo SET",
        "isolation",
    ),
    # Not in pg_db_role_setting: only the sessions' own values show it (sql/checks/isolation.sql).
    "session_replication_role replica for the whole cluster": BlindSpot(
        ["alter system set session_replication_role = replica", "select pg_reload_conf()"],
        ["alter system reset session_replication_role", "select pg_reload_conf()"],
        "setting session_replication_role=replica is in force in the login role todo_owner's sessions "
        "(source: configuration file)",
        "isolation",
    ),
    "another login role can become todo_app": BlindSpot(
        ["create role mallory login", "grant todo_app to mallory"],
        ["drop role mallory"],
        "role mallory can become todo_app (member of todo_app)",
        "isolation",
        "  mallory: member of todo_app",
    ),
    "a role with ADMIN on todo_app": BlindSpot(
        [
            "create role keyholder nologin",
            # ADMIN alone, where the release can say so (SET is a membership's option since 16).
            """do $$ begin
                   if current_setting('server_version_num')::int >= 160000 then
                       execute 'grant todo_app to keyholder with admin option, set false';
                   else
                       execute 'grant todo_app to keyholder with admin option';
                   end if;
               end $$""",
        ],
        ["drop role keyholder"],
        "role keyholder can become todo_app (ADMIN on todo_app)",
        "isolation",
        "  keyholder: ADMIN on todo_app",
    ),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[OwnPostgres]:
    with OwnPostgres() as own:
        yield own


@pytest.fixture(scope="module")
def api(cluster: OwnPostgres) -> Iterator[httpx.Client]:
    settings = settings_for(cluster.url, isolation_check_interval_seconds=INTERVAL)
    with serving_client(create_app(settings)) as client:
        yield client


def _run(superuser_url: str, statements: list[str]) -> None:
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        for statement in statements:
            superuser.execute(statement)


@pytest.mark.parametrize("name", list(BLIND_SPOTS))
def test_caught_at_start_up_by_policies_and_while_serving(
    cluster: OwnPostgres, api: httpx.Client, tmp_path: Path, name: str
) -> None:
    spot = BLIND_SPOTS[name]
    alice = new_user()
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        "clean at first",
        CHECKS_SECONDS,
    )
    _run(cluster.superuser_url, spot.weaken)
    try:
        wait_until(lambda: refused(api, alice), f"{name}: refused while serving", CHECKS_SECONDS)

        # `policies` prints each of audit_database's findings as a line of its own, so this is also
        # the audit's own verdict: one of its findings starts with the expected one.
        policies = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET)
        assert policies.returncode == 1
        assert f"  - [{spot.kind}] {spot.finding}" in policies.stdout
        assert spot.listed is None or spot.listed in policies.stdout.splitlines()

        assert spot.finding in refusal(cluster.url, tmp_path).replace('\\"', '"')  # the log line is JSON
    finally:
        _run(cluster.superuser_url, spot.undo)
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        f"{name}: served again",
        CHECKS_SECONDS,
    )


def test_another_users_task_is_refused_not_leaked_once_equals_means_not_equals(
    cluster: OwnPostgres, api: httpx.Client
) -> None:
    """The probe's case: with both weakenings bob read alice's task through his own path."""
    alice, bob = new_user(), new_user()
    created = api.post(alice.tasks_url, json={"title": "alice's"}, headers=alice.headers)
    assert created.status_code == 201
    task_url = bob.task_url(created.json()["id"])
    assert api.get(task_url, headers=bob.headers).status_code == 404
    _run(cluster.superuser_url, _IMMUTABLE_IDENTITY + _EQUALS_MEANS_NOT_EQUALS)
    try:
        wait_until(lambda: refused(api, bob), "refused while serving", CHECKS_SECONDS)
        read = api.get(task_url, headers=bob.headers)
        assert_problem(read, 503, "isolation-unverified")
        assert "alice's" not in read.text
    finally:
        _run(cluster.superuser_url, [_STABLE_IDENTITY, "drop extension citext"])
    wait_until(
        lambda: api.get(task_url, headers=bob.headers).status_code == 404, "served again", CHECKS_SECONDS
    )
    with psycopg.connect(cluster.superuser_url) as superuser:
        assert superuser.execute(
            "select title from public.tasks where user_id = %s", [alice.id]
        ).fetchall() == [("alice's",)]


def test_another_sessions_temporary_function_is_not_a_finding(
    cluster: OwnPostgres, api: httpx.Client, tmp_path: Path
) -> None:
    """todo_app has no USAGE on another session's temporary schema, so it reaches nothing there; the
    check used to list such a function as one todo_app may call and refuse every request."""
    alice = new_user()
    with psycopg.connect(cluster.url, autocommit=True) as other_session:
        other_session.execute("create function pg_temp.helper() returns int language sql as 'select 1'")
        assert audit_database(cluster.url).findings == []
        policies = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET)
        assert policies.returncode == 0, policies.stdout
        # A start-up check runs while the function exists: the app would not start on a finding.
        started = settings_for(cluster.url, isolation_check_interval_seconds=3600)
        with serving_client(create_app(started)) as fresh:
            assert fresh.get(alice.tasks_url, headers=alice.headers).status_code == 200
        time.sleep(5 * INTERVAL)  # the running API checks again, several times, meanwhile
        assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200


@pytest.mark.parametrize(
    "grant",
    [None, "grant select, update on large object 454545 to todo_owner"],
    ids=["its-owners-alone", "granted-to-another-role"],
)
def test_a_large_object_neither_todo_app_nor_public_may_reach_is_not_a_finding(
    cluster: OwnPostgres, api: httpx.Client, tmp_path: Path, grant: str | None
) -> None:
    """A DBA's own large object in the API's database is none of todo_app's: with a mutant the tests let
    live every large object was a finding, and stopped the API serving (the mutation round of stop 84)."""
    alice = new_user()
    _run(
        cluster.superuser_url,
        ["select pg_catalog.lo_from_bytea(454545, 'the DBA''s own')", *filter(None, [grant])],
    )
    try:
        assert audit_database(cluster.url).findings == []
        policies = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET)
        assert policies.returncode == 0, policies.stdout
        time.sleep(5 * INTERVAL)  # the running API checks again, several times, meanwhile
        assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200
    finally:
        _run(cluster.superuser_url, ["select pg_catalog.lo_unlink(454545)"])


def _verified(api: httpx.Client) -> float:
    return value(scrape(str(api.base_url).rstrip("/")), "todo_api_isolation_verified")


# Set for every session at once (ALTER SYSTEM, as postgresql.conf would), and so for a running API's
# own: replica let creates past the quota and wrote no event, off refused every task request while
# /readyz said ready and every check passed, app made every task request a 500.
CLUSTER_SETTINGS = {
    "session_replication_role": "replica",
    "row_security": "off",
    "search_path": "app",
    # Every large object readable and writable by every role, whatever its grants (the verification
    # probe of stop 83).
    "lo_compat_privileges": "on",
}


@pytest.mark.parametrize("name", list(CLUSTER_SETTINGS))
def test_a_setting_of_every_session_is_refused_while_serving_and_changes_nothing(
    cluster: OwnPostgres, api: httpx.Client, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    setting = CLUSTER_SETTINGS[name]
    alice = new_user()
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        "clean at first",
        CHECKS_SECONDS,
    )
    keyed = {**alice.headers, "Idempotency-Key": "kept"}
    created = api.post(alice.tasks_url, json={"title": "kept"}, headers=keyed)
    assert created.status_code == 201
    task_id = created.json()["id"]
    with caplog.at_level(logging.INFO, logger="api.db.isolation"):
        _run(cluster.superuser_url, [f"alter system set {name} = {setting}", "select pg_reload_conf()"])
        try:
            # The postmaster re-reads its configuration, then signals every session, which takes it up
            # at its next command: a check sent within those milliseconds may still pass on a session
            # not yet told (and a request on it still runs as before). What is held below is what
            # comes once every session has been told.
            time.sleep(1)
            told = len(caplog.records)
            wait_until(lambda: refused(api, alice), f"{name}: refused while serving", CHECKS_SECONDS)
            for response in (
                api.post(alice.tasks_url, json={"title": "while weakened"}, headers=alice.headers),
                api.delete(alice.task_url(task_id), headers=alice.headers),
                api.get("/readyz"),
            ):
                assert_problem(response, 503, "isolation-unverified")
            wait_until(
                lambda: _verified(api) == 0, f"{name}: the metric shows isolation unverified", CHECKS_SECONDS
            )
            time.sleep(5 * INTERVAL)  # more checks and requests: refused throughout, never served between
            assert refused(api, alice)
            assert api.get("/readyz").status_code == 503
            logged = [record for record in caplog.records if record.name == "api.db.isolation"]
            since_told = [record for record in caplog.records[told:] if record.name == "api.db.isolation"]
            assert not [record for record in since_told if record.levelno < logging.ERROR], "verified again"
            assert f"setting {name}={setting} is in force" in logged[-1].getMessage()
        finally:
            _run(cluster.superuser_url, [f"alter system reset {name}", "select pg_reload_conf()"])
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        f"{name}: served again",
        CHECKS_SECONDS,
    )
    with psycopg.connect(cluster.superuser_url) as superuser:

        def rows(query: str) -> list[tuple[Any, ...]]:
            return superuser.execute(query, [alice.id]).fetchall()

        assert rows("select title from public.tasks where user_id = %s") == [("kept",)]
        assert rows("select tasks from app.task_counts where user_id = %s") == [(1,)]
        assert rows("select kind, task_id from public.task_events where user_id = %s") == [
            ("task.created", task_id)
        ]
    # Deleted means gone once the settings are back: the key keeps neither the task nor the request.
    assert api.delete(alice.task_url(task_id), headers=alice.headers).status_code == 204
    with psycopg.connect(cluster.superuser_url) as superuser:
        assert superuser.execute(
            "select task_id, request_hash from public.idempotency_keys where user_id = %s", [alice.id]
        ).fetchall() == [(None, None)]


def test_a_name_the_session_no_longer_knows_fails_closed_before_the_next_check_and_changes_nothing(
    cluster: OwnPostgres,
) -> None:
    # Between two checks (an hour apart here) a search_path set for every session made each task
    # request a 500: "relation tasks does not exist". Now the first refusal distrusts isolation.
    # Requests no longer read the session's search_path (they set theirs empty and name tables with
    # their schema); a table renamed under the API leaves a name unknown as that did.
    alice = new_user()
    settings = settings_for(cluster.url, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200
        created: list[str] = []
        _run(cluster.superuser_url, ["alter table public.tasks rename to tasks_elsewhere"])
        try:
            # Each pooled session reads the new configuration between two statements, so the first
            # creates may still succeed; the first that does not must fail closed.
            def refused_at_last() -> bool:
                response = api.post(alice.tasks_url, json={"title": "while renamed"}, headers=alice.headers)
                if response.status_code == 201:
                    created.append(str(response.json()["id"]))
                    return False
                assert_problem(response, 503, "isolation-unverified")
                assert response.headers["Retry-After"].isdigit()
                return True

            wait_until(refused_at_last, "a create is refused", CHECKS_SECONDS)
            assert refused(api, alice)
            assert api.get("/readyz").status_code == 503
        finally:
            _run(cluster.superuser_url, ["alter table public.tasks_elsewhere rename to tasks"])
    with psycopg.connect(cluster.superuser_url) as superuser:
        stored = superuser.execute("select id::text from public.tasks where user_id = %s", [alice.id])
        assert sorted(row[0] for row in stored) == sorted(created)


# In DATABASE_URL (or libpq's PGOPTIONS), the settings reach every session the API opens, and no
# catalog holds them: serve started and policies found nothing.
CLIENT_SETTINGS = {
    "row_security off in the URL's options": ("&options=-c%20row_security%3Doff", {}, "row_security=off"),
    "search_path in the URL's options": ("&options=-c%20search_path%3Dapp", {}, "search_path=app"),
    "row_security off in PGOPTIONS": ("", {"PGOPTIONS": "-c row_security=off"}, "row_security=off"),
}


@pytest.mark.parametrize("name", list(CLIENT_SETTINGS))
def test_a_setting_the_client_gives_every_session_refuses_serve_and_fails_policies(
    cluster: OwnPostgres, tmp_path: Path, name: str
) -> None:
    options, env, setting = CLIENT_SETTINGS[name]
    url = cluster.url + options
    finding = f"setting {setting} is in force in the login role todo_owner's sessions (source: client)"

    policies = run_cli("policies", cwd=tmp_path, DATABASE_URL=url, BETTER_AUTH_SECRET=SECRET, **env)
    assert policies.returncode == 1, policies.stdout
    assert f"  - [isolation] {finding}" in policies.stdout

    assert finding in refusal(url, tmp_path, **env).replace('\\"', '"')  # the log line is JSON


# A role a DBA let create in schema public, and nothing else, makes functions and an operator that
# match the API's VARCHAR parameters exactly, where pg_catalog's take text: each records who called
# it, and with what, in a table only that role reads, and the search matches every task.
_MALLORY = "mallory"
_IMPOSTORS = [
    f"create role {_MALLORY} nologin",
    f"grant create on schema public to {_MALLORY}",
    f"set role {_MALLORY}",
    "create table public.loot (caller text, what text)",
    """create function public.record(what text) returns void language sql security definer
       set search_path = '' as $$
       insert into public.loot values (pg_catalog.current_setting('app.user_id', true), what) $$""",
    """create function public.lower(v varchar) returns varchar language sql security definer
       set search_path = '' as $$ select public.record('lower ' || v); select pg_catalog.lower(v::text) $$""",
    """create function public.strpos(t text, v varchar) returns integer language sql security definer
       set search_path = '' as $$ select public.record('strpos ' || t); select 1 $$""",
    """create function public.text_is_varchar(t text, v varchar) returns boolean language sql
       security definer set search_path = '' as $$
       select public.record('= ' || t || ' ' || v); select t operator(pg_catalog.=) v::text $$""",
    "create operator public.= (leftarg = text, rightarg = varchar, function = public.text_is_varchar)",
]


def _gone(role: str) -> list[str]:
    return [f"drop owned by {role}", f"drop role {role}"]


def test_functions_another_role_makes_in_schema_public_are_never_what_a_request_calls(
    cluster: OwnPostgres,
) -> None:
    """The database-settings probe of stop 81: on the default search_path ("$user", public), such
    overloads won over pg_catalog's from the moment they were made until the next check: a search for
    "zzz" listed every task, and the role recorded user ids, titles and Idempotency-Keys. Requests
    now name only pg_catalog's (an empty search_path), so between checks nothing of hers runs."""
    alice = new_user()
    # No check while it runs: the running check finds the functions (todo_app may call them) and
    # refuses, which tests/test_isolation_watch.py covers; this is about the time before it.
    settings = settings_for(cluster.url, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        _run(cluster.superuser_url, _IMPOSTORS)
        try:
            created = api.post(
                alice.tasks_url,
                json={"title": "Buy milk"},
                headers={**alice.headers, "Idempotency-Key": "k-1"},
            )
            assert created.status_code == 201, created.text
            assert api.get(alice.task_url(created.json()["id"]), headers=alice.headers).status_code == 200
            found = api.get(alice.tasks_url, params={"q": "MILK"}, headers=alice.headers)
            assert [task["title"] for task in found.json()] == ["Buy milk"]
            nothing = api.get(alice.tasks_url, params={"q": "zzz"}, headers=alice.headers)
            assert nothing.status_code == 200
            assert nothing.json() == []
            with psycopg.connect(cluster.superuser_url) as superuser:
                assert superuser.execute("select caller, what from public.loot").fetchall() == []
        finally:
            _run(cluster.superuser_url, _gone(_MALLORY))


def _impostor(
    role: str, left: str, right: str, does: str, *, operator: str = "=", returns: str = "boolean"
) -> list[str]:
    """An operator for (left, right), which pg_catalog lacks, made by a role that may create in
    schema public and nothing else: an exact match wherever a comparison (or product) of those two
    types is left to the search_path. Its function runs as whoever calls it, does `does` (PL/pgSQL)
    and answers as pg_catalog's would."""
    return [
        f"create role {role} nologin",
        f"grant create on schema public to {role}",
        f"set role {role}",
        f"""create function public.{role}_impostor(a {left}, b {right}) returns {returns}
            language plpgsql set search_path = '' as $$ begin {does};
            return a operator(pg_catalog.{operator}) b::pg_catalog.{left}; end $$""",
        f"create operator public.{operator} (leftarg = {left}, rightarg = {right},"
        f" function = public.{role}_impostor)",
    ]


def _counted_impostor(left: str, right: str, operator: str, counter: str) -> tuple[str, list[str]]:
    """Her role, and the statements that make her operator (`_impostor`) and the sequence `counter` in
    schema public, whose every run it uses: a sequence's use outlives a rolled-back transaction, so it
    says whether her code ran."""
    role = _role_for(left, right, operator)
    impostor = _impostor(
        role, left, right, f"perform pg_catalog.nextval('public.{counter}')", operator=operator
    )
    return role, [
        *impostor[:3],
        f"create sequence public.{counter}",
        f"grant usage, update on sequence public.{counter} to public",
        *impostor[3:],
    ]


def _advisory_locks_held(superuser_url: str, key: int) -> int:
    with psycopg.connect(superuser_url) as superuser:
        row = superuser.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and classid = %s", [key]
        ).fetchone()
    assert row is not None
    return int(row[0])


# Operators for types pg_catalog has none exactly for, each an exact match for a comparison the
# checks, the audit or migrate's refusals make: `role_oid = 0`, `classid = '...'::regclass`,
# `nspname NOT LIKE 'pg\_%'`, `polroles @> ARRAY[...]`, `array_agg(...) = ARRAY[...]` (the mutation
# and verification probes of stop 82 had each run).
_OPERATORS_PG_CATALOG_LACKS = [
    pytest.param("oid", "integer", "=", id="oid=integer"),
    pytest.param("oid", "regclass", "=", id="oid=regclass"),
    pytest.param("name", "name", "!~~", id="name!~~name"),
    pytest.param("oid[]", "oid[]", "@>", id="oid[]@>oid[]"),
    pytest.param("oid[]", "oid[]", "=", id="oid[]=oid[]"),
]


def _role_for(left: str, right: str, operator: str) -> str:
    return "mallory_" + "".join(
        character if character.isalnum() else "_" for character in left + operator + right
    )


@pytest.mark.parametrize("command", ["policies", "migrate"])
@pytest.mark.parametrize(("left", "right", "operator"), _OPERATORS_PG_CATALOG_LACKS)
def test_the_owners_commands_run_no_operator_another_role_makes_in_schema_public(
    cluster: OwnPostgres, tmp_path: Path, command: str, left: str, right: str, operator: str
) -> None:
    """The mutation probe of stop 82: the audit compared the live policies with the files on the
    owner's search_path, so `policies` run as the owner (the embedded database's login role, an
    owner's URL on Neon) ran her `=(oid, integer)` as the owner: it lifted FORCE ROW LEVEL SECURITY
    and counted every user's tasks before the audit listed her operator. The verification probe:
    migrate's own refusals (sql/checks/schema_owner.sql's NOT LIKE) ran her `!~~(name, name)`, which
    granted her todo_app. Not yoyo's own statements, which this operator list leaves out."""
    role, impostor = _counted_impostor(left, right, operator, "ran_as_owner")
    _run(cluster.superuser_url, impostor)
    try:
        result = run_cli(command, cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET)
        with psycopg.connect(cluster.superuser_url) as superuser:
            ran = superuser.execute("select is_called from public.ran_as_owner").fetchone()
        assert ran == (False,), result.stdout + result.stderr
    finally:
        _run(cluster.superuser_url, _gone(role))


def _superuser(database_url: str) -> str:
    return database_url.replace(f"postgresql://{LOGIN_ROLE}@", "postgresql://postgres@", 1)


@pytest.mark.parametrize(("left", "right", "operator"), _OPERATORS_PG_CATALOG_LACKS)
def test_policies_as_a_login_role_that_owns_nothing_runs_no_operator_another_role_makes(
    migrated_db_url: str, tmp_path: Path, left: str, right: str, operator: str
) -> None:
    """The mutation probe of stop 82: nothing held the audit's empty search_path, nor the casts that
    make each comparison of session_settings.sql one of two values of one type (`setrole =
    0::oid`), to which a setting for the database gives a row. Her operator raises, which `policies`
    would print."""
    role = _role_for(left, right, operator)
    superuser = _superuser(migrated_db_url)
    with psycopg.connect(superuser) as db:
        name = db.info.dbname
    _run(
        superuser,
        [
            f"alter database {name} set work_mem = '8MB'",
            *_impostor(role, left, right, "raise exception 'impostor ran'", operator=operator),
        ],
    )
    try:
        result = run_cli(
            "policies", cwd=tmp_path, DATABASE_URL=as_role(migrated_db_url), BETTER_AUTH_SECRET=SECRET
        )
        said = result.stdout + result.stderr
        assert "Isolation audit" in said, said
        assert "impostor ran" not in said, said
    finally:
        _run(superuser, [*_gone(role), f"alter database {name} reset work_mem"])


@pytest.mark.parametrize(("left", "right", "operator"), _OPERATORS_PG_CATALOG_LACKS)
def test_no_operator_another_role_makes_runs_in_the_running_check_whatever_it_compares(
    cluster: OwnPostgres, left: str, right: str, operator: str
) -> None:
    """As the test above it, for the running check, which read the catalog on the login role's
    search_path ("$user", public), so that such an operator ran as the login role in every check: it
    could switch to todo_app and read any user's tasks, and, dropped as soon as it had run, leave the
    check clean (the verification probes of stop 81, `=(oid, integer)`, and of stop 82,
    `@>(oid[], oid[])`). Here isolation.sql, session_settings.sql (given a row by a setting for the
    database), and the release a drift is worded with (`release_mismatch_on`, read once the findings
    are drift alone, as her operator makes them)."""
    role = _role_for(left, right, operator)
    settings = settings_for(cluster.url, isolation_check_interval_seconds=INTERVAL)
    with serving_client(create_app(settings)) as api:
        assert api.get("/readyz").status_code == 200
        _run(
            cluster.superuser_url,
            [
                "alter database todo set work_mem = '8MB'",
                *_impostor(
                    role, left, right, "perform pg_catalog.pg_try_advisory_lock(4444, 1)", operator=operator
                ),
            ],
        )
        try:
            time.sleep(10 * INTERVAL)  # several checks
            assert _advisory_locks_held(cluster.superuser_url, 4444) == 0, "the operator ran in a check"
        finally:
            _run(cluster.superuser_url, [*_gone(role), "alter database todo reset work_mem"])


# The checks docs/security.md ("Checking it yourself, from SQL") has a DBA run with psql on its
# default search_path (reach.sql's line there sets an empty one, which the file's header asks for).
_CHECKS_RUN_BY_HAND = ["isolation.sql", "session_settings.sql", "schema_owner.sql"]


@pytest.mark.parametrize("check", _CHECKS_RUN_BY_HAND)
@pytest.mark.parametrize(("left", "right", "operator"), _OPERATORS_PG_CATALOG_LACKS)
def test_a_check_a_dba_runs_by_hand_on_the_default_search_path_runs_no_operator_another_role_makes(
    cluster: OwnPostgres, left: str, right: str, operator: str, check: str
) -> None:
    """The mutation probe of stop 83: run as the docs say, on the session's own search_path ("$user",
    public), isolation.sql's comparisons of two oid arrays took her =(oid[], oid[]) and @>(oid[],
    oid[]) over pg_catalog's, which take anyarray, and ran her code as the DBA, a superuser. A login
    role made as `todo-api migrate --login-role` makes one gives the comparison of arrays a row."""
    role, impostor = _counted_impostor(left, right, operator, "ran_as_dba")
    _run(
        cluster.superuser_url,
        ["create role todo_login login noinherit", "grant todo_app to todo_login", *impostor],
    )
    try:
        with psycopg.connect(cluster.superuser_url, autocommit=True) as dba:
            assert dba.execute("show search_path").fetchone() == ('"$user", public',)
            dba.execute((SQL_DIR / "checks" / check).read_text()).fetchall()
            assert dba.execute("select is_called from public.ran_as_dba").fetchone() == (False,)
    finally:
        _run(cluster.superuser_url, [*_gone(role), "drop role todo_login"])


def test_no_operator_another_role_makes_runs_when_the_pool_connects(cluster: OwnPostgres) -> None:
    """The mutation probe of stop 82: api/db/pool.py reads the database's identity on each new
    connection, on the login role's search_path; its product was numeric by integer, which Postgres
    lacks, so her `*(numeric, integer)` ran as the login role whenever a session was made anew (a
    restart, a failover, a DBA's pg_terminate_backend)."""
    role = "mallory_times"
    alice = new_user()
    settings = settings_for(cluster.url, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200
        _run(
            cluster.superuser_url,
            _impostor(
                role,
                "numeric",
                "integer",
                "perform pg_catalog.pg_try_advisory_lock(4343, 1)",
                operator="*",
                returns="numeric",
            ),
        )
        try:
            with psycopg.connect(cluster.superuser_url, autocommit=True) as superuser:
                superuser.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where usename = %s and pid <> pg_backend_pid()",
                    [LOGIN_ROLE],
                )
            answered: list[int] = []

            def three_answered_on_new_sessions() -> bool:
                answered.append(api.get(alice.tasks_url, headers=alice.headers).status_code)
                return answered.count(200) >= 3

            wait_until(three_answered_on_new_sessions, f"the API answering again: {answered}", 15, every=0.2)
            assert _advisory_locks_held(cluster.superuser_url, 4343) == 0, (
                "the operator ran as the pool connected"
            )
        finally:
            _run(cluster.superuser_url, _gone(role))


@pytest.mark.parametrize(
    ("setting", "reset"),
    [
        ("alter database todo set app.user_id = 'someone'", "ALTER DATABASE todo RESET app.user_id"),
        (
            f"alter role {LOGIN_ROLE} set app.user_id = 'someone'",
            f"ALTER ROLE {LOGIN_ROLE} RESET app.user_id",
        ),
        (
            f"alter role {LOGIN_ROLE} in database todo set app.user_id = 'someone'",
            f"ALTER ROLE {LOGIN_ROLE} IN DATABASE todo RESET app.user_id",
        ),
        ("alter role all set app.user_id = 'someone'", "ALTER ROLE ALL RESET app.user_id"),
    ],
    ids=["database", "role", "role-in-database", "all"],
)
def test_a_setting_of_the_login_roles_sessions_is_named_with_the_reset_that_undoes_it(
    cluster: OwnPostgres, tmp_path: Path, setting: str, reset: str
) -> None:
    """session_settings.sql's finding ends with the statement that removes the setting, which nothing
    held (the mutation probe of stop 82: a setting of the database was told to run `ALTER ROLE ALL
    RESET`, which leaves it). Run as said, `policies` no longer finds it."""
    _run(cluster.superuser_url, [setting])
    try:
        said = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET).stdout
        assert f"({reset})" in said, said
    finally:
        _run(cluster.superuser_url, [reset])
    after = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET).stdout
    assert "app.user_id" not in after, after


@pytest.mark.parametrize(
    "reads_settings", [False, True], ids=["login-role", "login-role-reading-all-settings"]
)
def test_a_setting_from_alter_system_is_named_with_the_alter_system_reset_that_undoes_it(
    cluster: OwnPostgres, tmp_path: Path, reads_settings: bool
) -> None:
    """session_settings.sql tells a setting from postgresql.conf or ALTER SYSTEM by its source, which
    reads `configuration file /.../postgresql.auto.conf` to a login role that may read every setting
    (pg_read_all_settings, a superuser): nothing held the hint, so it could fall back to "reset it
    where it is set", naming no statement."""
    grant = [f"grant pg_read_all_settings to {LOGIN_ROLE}"] if reads_settings else []
    _run(
        cluster.superuser_url,
        [*grant, "alter system set session_replication_role = replica", "select pg_reload_conf()"],
    )
    try:
        said = run_cli("policies", cwd=tmp_path, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET).stdout
        assert (
            "(ALTER SYSTEM RESET session_replication_role, or remove it from postgresql.conf,"
            " then SELECT pg_reload_conf())" in said
        ), said
    finally:
        revoke = [f"revoke pg_read_all_settings from {LOGIN_ROLE}"] if reads_settings else []
        _run(
            cluster.superuser_url,
            [*revoke, "alter system reset session_replication_role", "select pg_reload_conf()"],
        )
