"""Another user's task does not exist for you: 404 on every endpoint, and the task is unchanged.

Here the path names the caller (so the 403 check passes) and the task id is someone else's. Two
layers stand between the caller and the row: row-level security, and the owner filter every
statement carries (api/tasks/ownership.py). The suite runs once with each layer alone, so that
neither passes because of the other:

- `rls-alone`: the statements are built without the owner filter; only the policies decide.
- `owner-filter-alone`: the API serves a database whose tables have row-level security disabled
  (after its start-up isolation check passed, and with the next check an hour away); only the
  statements decide.

`test_with_both_layers_off_another_users_task_is_readable` shows that each variant can fail.
"""

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import true

from api.app import create_app
from api.tasks import ownership, queries
from tests.conftest import url_for
from tests.support import TLS, ApiUser, serving, settings_for

APP_TABLES = ("users", "tasks", "idempotency_keys")
# Far past any test: the isolation check must not see the weakened database while the suite runs.
NEXT_CHECK_SECONDS = 3600.0


@contextmanager
def owner_filter_taken_out() -> Iterator[None]:
    """Every statement in api.tasks.queries rebuilt without the owner filter, then rebuilt again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ownership, "owner_filter", lambda column, user_id: true())
        importlib.reload(queries)
        try:
            yield
        finally:
            patch.undo()
            importlib.reload(queries)


@pytest.fixture(scope="module")
def rls_off_db_url(migrated_template: NoopExecutor) -> Iterator[str]:
    """A migrated database of this module's own, served by an API, then with row-level security off."""
    dbname = "todo_rls_off"
    with DatabaseJanitor(
        user=migrated_template.user,
        host=migrated_template.host,
        port=migrated_template.port,
        dbname=dbname,
        template_dbname=migrated_template.template_dbname,
    ):
        yield url_for(migrated_template, dbname)


@pytest.fixture(scope="module")
def rls_off_api(rls_off_db_url: str) -> Iterator[str]:
    settings = settings_for(rls_off_db_url, isolation_check_interval_seconds=NEXT_CHECK_SECONDS)
    with serving(create_app(settings)) as base_url:
        # The owner (the login role) switches the policies off, as a careless DBA might.
        with psycopg.connect(rls_off_db_url, autocommit=True) as owner:
            for table in APP_TABLES:
                owner.execute(f"alter table {table} no force row level security")
                owner.execute(f"alter table {table} disable row level security")
            off = owner.execute(
                "select count(*) from pg_class where relname = any(%s) and not relrowsecurity"
                " and relnamespace = 'public'::regnamespace",
                [list(APP_TABLES)],
            ).fetchone()
            assert off == (len(APP_TABLES),)
        yield base_url


@dataclass(frozen=True)
class Layer:
    base_url: str
    db_url: str


@pytest.fixture(scope="module", params=["rls-alone", "owner-filter-alone"])
def layer(request: pytest.FixtureRequest, api_db_url: str) -> Iterator[Layer]:
    if request.param == "rls-alone":
        with owner_filter_taken_out(), serving(create_app(settings_for(api_db_url))) as base_url:
            yield Layer(base_url, api_db_url)
    else:
        yield Layer(request.getfixturevalue("rls_off_api"), request.getfixturevalue("rls_off_db_url"))


@pytest.fixture
def client(layer: Layer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=layer.base_url, timeout=30, verify=TLS) as http:
        yield http


@pytest.fixture
def api_db(layer: Layer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(layer.db_url, autocommit=True) as connection:
        yield connection


# (method, path under the task's URL, JSON body)
TASK_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("PUT", "", {"title": "Stolen", "completed": True}),
    ("PUT", "", {}),
    ("DELETE", "", None),
    ("PATCH", "/complete", None),
    ("PATCH", "/complete", {"completed": True}),
]


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ENDPOINTS)
def test_another_users_task_is_not_found_and_unchanged(
    client: httpx.Client,
    alice: ApiUser,
    bob: ApiUser,
    api_db: psycopg.Connection[Any],
    method: str,
    suffix: str,
    body: Any,
) -> None:
    bobs = client.post(bob.tasks_url, json={"title": "Bob's", "description": "private"}, headers=bob.headers)
    task = bobs.json()
    before = api_db.execute("select * from tasks where id = %s", [task["id"]]).fetchone()

    response = client.request(method, alice.task_url(task["id"]) + suffix, json=body, headers=alice.headers)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json() == {
        "type": "urn:todo-api:problem:not-found",
        "title": "Not found",
        "status": 404,
        "detail": "No such task.",
    }
    assert api_db.execute("select * from tasks where id = %s", [task["id"]]).fetchone() == before
    assert client.get(bob.task_url(task["id"]), headers=bob.headers).json() == task


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ENDPOINTS)
def test_a_missing_task_looks_exactly_like_another_users(
    client: httpx.Client, alice: ApiUser, method: str, suffix: str, body: Any
) -> None:
    response = client.request(method, alice.task_url(2**62) + suffix, json=body, headers=alice.headers)
    assert response.status_code == 404
    assert response.json()["detail"] == "No such task."


def test_lists_show_only_your_own_tasks(client: httpx.Client, alice: ApiUser, bob: ApiUser) -> None:
    for user, title in [(alice, "Alice 1"), (bob, "Bob 1"), (alice, "Alice 2")]:
        client.post(user.tasks_url, json={"title": title}, headers=user.headers)

    assert [t["title"] for t in client.get(alice.tasks_url, headers=alice.headers).json()] == [
        "Alice 2",
        "Alice 1",
    ]
    assert [t["title"] for t in client.get(bob.tasks_url, headers=bob.headers).json()] == ["Bob 1"]
    searched = client.get(alice.tasks_url, params={"q": "Bob"}, headers=alice.headers)
    assert searched.json() == []


def test_another_users_idempotency_key_is_not_replayed(
    client: httpx.Client, alice: ApiUser, bob: ApiUser
) -> None:
    bobs = client.post(
        bob.tasks_url, json={"title": "Bob's"}, headers={**bob.headers, "Idempotency-Key": "k"}
    )

    alices = client.post(
        alice.tasks_url, json={"title": "Bob's"}, headers={**alice.headers, "Idempotency-Key": "k"}
    )

    assert alices.status_code == 201
    assert "idempotent-replayed" not in alices.headers
    assert alices.json()["user_id"] == alice.id
    assert alices.json()["id"] != bobs.json()["id"]


def test_with_both_layers_off_another_users_task_is_readable(
    rls_off_api: str, alice: ApiUser, bob: ApiUser
) -> None:
    """The sanity check of the two variants above: with neither layer, the suite would fail."""
    with owner_filter_taken_out(), httpx.Client(base_url=rls_off_api) as client:
        bobs = client.post(
            bob.tasks_url, json={"title": "Bob's", "description": "private"}, headers=bob.headers
        )
        task_id = bobs.json()["id"]

        stolen = client.get(alice.task_url(task_id), headers=alice.headers)
        listed = client.get(alice.tasks_url, headers=alice.headers)

    assert stolen.status_code == 200
    assert stolen.json()["description"] == "private"
    assert task_id in [task["id"] for task in listed.json()]
