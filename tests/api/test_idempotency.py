"""Retry-safe creates (the IETF Idempotency-Key draft): a repeat makes nothing and shows the task the
key made, as it is now, marked as a replay; the key is stored with the task in one transaction,
under row-level security; a deleted task leaves no copy behind, and what keys a user stores is
bounded by the task quota."""

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.tasks.idempotency import request_hash
from api.tasks.models import TaskCreate
from tests.support import (
    ApiUser,
    assert_problem,
    new_user,
    serving,
    serving_client,
    settings_for,
    wait_until_it_waits_for,
)


def _tasks(db: psycopg.Connection[Any], user: ApiUser) -> int:
    row = db.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone()
    assert row is not None
    return int(row[0])


def _keys(db: psycopg.Connection[Any], user: ApiUser) -> list[str]:
    return [key for (key,) in db.execute("select key from idempotency_keys where user_id = %s", [user.id])]


def _post(client: httpx.Client, user: ApiUser, key: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(user.tasks_url, json=body, headers={**user.headers, "Idempotency-Key": key})


def test_a_repeat_creates_nothing_and_shows_the_task_as_it_is_now(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    first = _post(client, alice, "create-milk-1", {"title": "Buy milk", "description": "two litres"})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers, "a first answer is not a replay"
    task_url = alice.task_url(first.json()["id"])
    client.put(task_url, json={"title": "Buy oat milk"}, headers=alice.headers)
    now = client.get(task_url, headers=alice.headers)

    # The same body, spelled otherwise, after the task changed.
    repeat = _post(client, alice, "create-milk-1", {"description": "two litres", "title": "Buy milk"})

    assert repeat.status_code == 201
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.json() == now.json()
    assert repeat.json()["title"] == "Buy oat milk"
    assert repeat.headers["etag"] == now.headers["etag"] == f'"{now.json()["id"]}.2"'
    assert repeat.headers["location"] == first.headers["location"]
    assert _tasks(api_db, alice) == 1
    assert _keys(api_db, alice) == ["create-milk-1"]


def test_a_browser_may_read_that_an_answer_is_a_replay(api_db_url: str) -> None:
    alice, origin = new_user(), "http://localhost:3000"
    with (
        serving_client(
            create_app(settings_for(api_db_url, cors_origins=[origin])), headers={"Origin": origin}
        ) as browser,
    ):
        _post(browser, alice, "k", {"title": "t"})
        repeat = _post(browser, alice, "k", {"title": "t"})
    assert repeat.headers["idempotent-replayed"] == "true"
    exposed = repeat.headers["access-control-expose-headers"].lower().replace(" ", "").split(",")
    assert "idempotent-replayed" in exposed


def _stored_key(db: psycopg.Connection[Any], user: ApiUser, key: str) -> str:
    """The key's whole row, as text: whatever it holds, spelled out."""
    row = db.execute(
        "select row_to_json(k)::text from idempotency_keys k where user_id = %s and key = %s", [user.id, key]
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_deleting_the_task_leaves_no_copy_and_its_key_answers_410_whatever_the_body(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    body = {"title": "Secret plan", "description": "Surprise party"}
    created = _post(client, alice, "plan", body)
    assert "Secret plan" not in _stored_key(api_db, alice, "plan"), "a key names its task, never copies it"

    assert client.delete(alice.task_url(created.json()["id"]), headers=alice.headers).status_code == 204
    # Gone in the DELETE's own transaction: nothing of the task is stored anywhere, not even the
    # hash of the request that made it, against which a guess at its content could be checked.
    tombstone = _stored_key(api_db, alice, "plan")
    assert '"task_id":null' in tombstone
    assert '"request_hash":null' in tombstone
    assert request_hash(TaskCreate.model_validate(body)) not in tombstone
    for table in ("tasks", "idempotency_keys", "users"):
        dump = api_db.execute(
            sql.SQL("select coalesce(string_agg(t::text, ''), '') from {} t").format(sql.Identifier(table))
        ).fetchone()
        assert dump is not None
        assert "Secret plan" not in dump[0]
        assert "Surprise party" not in dump[0]

    replay = _post(client, alice, "plan", body)

    assert_problem(replay, 410, "task-deleted")
    assert "etag" not in replay.headers
    # Another body is answered alike, so the key tells nothing about what the deleted task held.
    guess = _post(client, alice, "plan", {"title": "Secret plan", "description": "Dinner"})
    assert_problem(guess, 410, "task-deleted")
    assert _tasks(api_db, alice) == 0, "nothing was created"


def test_keyed_create_and_delete_cycles_store_a_bounded_number_of_keys(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    quota = 5
    alice = new_user()
    with serving_client(create_app(settings_for(api_db_url, max_tasks_per_user=quota))) as client:
        for cycle in range(40):
            created = _post(client, alice, f"cycle-{cycle}", {"title": f"t{cycle}"})
            assert created.status_code == 201, created.text
            deleted = client.delete(alice.task_url(created.json()["id"]), headers=alice.headers)
            assert deleted.status_code == 204
        # The newest keys are kept as tombstones and answer 410 ...
        assert _post(client, alice, "cycle-39", {"title": "t39"}).status_code == 410
        kept = _keys(api_db, alice)
        # The price of the bound (README.md, api/tasks/idempotency.py): a dropped tombstone's key,
        # retried within IDEMPOTENCY_TTL_HOURS, creates its task anew.
        retried = _post(client, alice, "cycle-0", {"title": "t0"})
        assert retried.status_code == 201
        assert "idempotent-replayed" not in retried.headers
        assert _tasks(api_db, alice) == 1
    # ... and the oldest have been dropped: at most the quota's worth, plus the one just deleted.
    assert len(kept) <= quota + 1, kept
    assert "cycle-39" in kept
    assert "cycle-0" not in kept


def test_a_delete_during_a_keyed_create_may_leave_one_key_past_the_bound_until_the_next_keyed_create(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """Found racing keyed creates and deletes under `todo-api serve --workers 2`: with a quota of 4,
    a user held 9 keys, where README.md said at most twice the quota. A keyed create drops
    tombstones past the quota as its statement's snapshot has them; a delete that commits after that
    snapshot, while the create waits for the user's task count, leaves a tombstone the create did
    not see. The next keyed create the database answers, a replay included, drops it."""
    quota = 2
    alice = new_user()
    with (
        serving_client(create_app(settings_for(api_db_url, max_tasks_per_user=quota))) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        for key in ("gone-1", "gone-2"):
            created = _post(client, alice, key, {"title": key})
            assert (
                client.delete(alice.task_url(created.json()["id"]), headers=alice.headers).status_code == 204
            )
        deleted_meanwhile = _post(client, alice, "live-1", {"title": "live-1"}).json()
        assert _post(client, alice, "live-2", {"title": "live-2"}).status_code == 201
        assert len(_keys(api_db, alice)) == 2 * quota

        with psycopg.connect(api_db_url) as holder:
            holder.execute("delete from tasks where id = %s", [deleted_meanwhile["id"]])
            sent = pool.submit(_post, client, alice, "live-3", {"title": "live-3"})
            wait_until_it_waits_for(holder, sent)  # for the task count the delete holds
            holder.commit()
        assert sent.result().status_code == 201, sent.result().text
        assert len(_keys(api_db, alice)) == 2 * quota + 1

        replayed = _post(client, alice, "live-3", {"title": "live-3"})
        assert replayed.headers["idempotent-replayed"] == "true"
    kept = _keys(api_db, alice)
    assert len(kept) == 2 * quota, kept
    assert "gone-1" not in kept, "the oldest tombstone went"


@pytest.fixture
def short_memory_url(api_db_url: str) -> Iterator[str]:
    settings = settings_for(api_db_url, idempotency_ttl_hours=1 / 3600)  # one second
    with serving(create_app(settings)) as base_url:
        yield base_url


@pytest.fixture
def short_memory(short_memory_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=short_memory_url) as client:
        yield client


def test_expired_keys_of_every_user_are_purged_by_anyones_keyed_create(
    short_memory: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()
    created = _post(short_memory, alice, "made", {"title": "t"})
    _post(short_memory, alice, "tombstone", {"title": "u"})
    short_memory.delete(alice.task_url(created.json()["id"]), headers=alice.headers)
    assert len(_keys(api_db, alice)) == 2
    time.sleep(1.5)

    assert _post(short_memory, bob, "bobs", {"title": "b"}).status_code == 201

    assert _keys(api_db, alice) == [], "alice's expired keys went with bob's create"
    assert _keys(api_db, bob) == ["bobs"]
    assert _tasks(api_db, alice) == 1, "only keys go: alice's remaining task stays"


def test_the_same_key_with_another_body_is_refused(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    assert _post(client, alice, "k", {"title": "one"}).status_code == 201
    reused = _post(client, alice, "k", {"title": "two"})
    assert_problem(reused, 422, "idempotency-key-reused")
    assert [error["field"] for error in reused.json()["errors"]] == ["header.idempotency-key"], (
        "a 422 names the bad field, as README.md says"
    )
    assert _tasks(api_db, alice) == 1


def test_twenty_concurrent_creates_with_one_key_make_one_task(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()

    def create(_: int) -> httpx.Response:
        return _post(client, alice, "retried-after-timeout", {"title": "exactly once"})

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(create, range(20)))
    assert [response.status_code for response in responses] == [201] * 20
    assert len({response.json()["id"] for response in responses}) == 1
    replayed = [response.headers.get("idempotent-replayed") for response in responses]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19, "one first answer, and replays"
    assert _tasks(api_db, alice) == 1


def test_keys_belong_to_their_user(client: httpx.Client, api_db: psycopg.Connection[Any]) -> None:
    alice, bob = new_user(), new_user()
    for_alice = _post(client, alice, "shared-name", {"title": "alice's"})
    for_bob = _post(client, bob, "shared-name", {"title": "bob's"})
    assert for_alice.status_code == for_bob.status_code == 201
    assert for_bob.json()["user_id"] == bob.id
    assert for_bob.json()["id"] != for_alice.json()["id"]
    assert (_tasks(api_db, alice), _tasks(api_db, bob)) == (1, 1)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(("",), id="empty"),
        pytest.param(("has space",), id="space"),
        pytest.param(("x" * 256,), id="256-characters"),
        pytest.param(("caf\u00e9",), id="not-ascii"),
        pytest.param(("tab\tkey",), id="tab"),
        # Which create would this be a retry of? Neither is guessed, not even when the two agree.
        pytest.param(("key-one", "key-two"), id="two-keys"),
        pytest.param(("key-one", "key-one"), id="one-key-twice"),
    ],
)
def test_a_malformed_or_repeated_key_is_422_and_creates_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], keys: tuple[str, ...]
) -> None:
    alice = new_user()
    given = [(b"idempotency-key", key.encode()) for key in keys]
    response = client.post(
        alice.tasks_url,
        json={"title": "t"},
        headers=[(b"authorization", f"Bearer {alice.token}".encode()), *given],
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["header.idempotency-key"]
    assert _tasks(api_db, alice) == 0


@pytest.mark.parametrize(
    "precondition",
    [
        pytest.param({"If-Match": '"1.1"'}, id="if-match-that-fails"),
        pytest.param({"If-None-Match": "*"}, id="if-none-match-star"),
    ],
)
def test_a_malformed_key_is_422_even_with_a_precondition_that_would_fail(
    client: httpx.Client, api_db: psycopg.Connection[Any], precondition: dict[str, str]
) -> None:
    """RFC 9110, section 13.2.1: preconditions are evaluated only when the request would otherwise
    succeed, so the malformed key is what the client is told about, not a 412."""
    alice = new_user()
    headers = {**alice.headers, "Idempotency-Key": "a b", **precondition}
    response = client.post(alice.tasks_url, json={"title": "t"}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["header.idempotency-key"]
    assert _tasks(api_db, alice) == 0
    assert _keys(api_db, alice) == []


@pytest.mark.parametrize(
    "precondition", [pytest.param({}, id="alone"), pytest.param({"If-Match": "*"}, id="with-if-match")]
)
def test_a_toggle_with_a_key_is_422_and_changes_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], precondition: dict[str, str]
) -> None:
    """Nothing stores a toggle's key, so its retry toggled back: a client that sent one believing the
    toggle safe to retry (the draft names PATCH among the methods a key may serve) is told instead."""
    alice = new_user()
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers).json()
    toggle_url = f"{alice.task_url(created['id'])}/complete"
    headers = {**alice.headers, "Idempotency-Key": "toggle-1", **precondition}

    for _ in range(2):  # the retry of a toggle whose answer was lost
        problem = assert_problem(client.patch(toggle_url, headers=headers), 422, "validation-error")
        assert [error["field"] for error in problem["errors"]] == ["header.idempotency-key"]
        assert "If-Match" in problem["errors"][0]["message"]

    stored = api_db.execute("select completed, version from tasks where id = %s", [created["id"]]).fetchone()
    assert stored == (False, created["version"])
    assert _keys(api_db, alice) == []
    # Setting the state is safe to retry as it is: the key is not needed there, and not refused.
    for _ in range(2):
        answer = client.patch(toggle_url, json={"completed": True}, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["completed"] is True


def test_a_quoted_key_is_the_structured_field_form_of_the_same_key(client: httpx.Client) -> None:
    alice = new_user()
    first = _post(client, alice, '"8e03978e-40d5"', {"title": "t"})
    assert _post(client, alice, "8e03978e-40d5", {"title": "t"}).json() == first.json()


def test_the_documents_schema_of_the_key_admits_exactly_the_keys_the_api_takes(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    """A client that checks a key against the OpenAPI document is refused nothing it admits, and sends
    nothing it refuses: `""` was admitted by the pattern and a 422, a quoted key of 255 characters
    refused by the length and taken."""
    create = client.get("/openapi.json").json()["paths"]["/api/{user_id}/tasks"]["post"]
    (schema,) = [p["schema"] for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    pattern = re.compile(schema["pattern"])
    alice = new_user()
    longest = "k" * 255
    for key in ['""', '"', '"""', '"a"', "a", '"a', 'a"', '"a"b"', longest, f'"{longest}"', longest + "k",
                f'"{longest}k"', "a b", '"a b"', "caf\u00e9"]:  # fmt: skip
        admitted = schema["minLength"] <= len(key) <= schema["maxLength"] and bool(pattern.search(key))
        given = [(b"authorization", f"Bearer {alice.token}".encode()), (b"idempotency-key", key.encode())]
        answer = client.post(alice.tasks_url, json={"title": "t"}, headers=given)
        assert answer.status_code == (201 if admitted else 422), (key, admitted, answer.text)
    # Six keys: `"`, `a`, `"a`, `a"`, `a"b` and the longest; a quoted one is the same key bare.
    assert _tasks(api_db, alice) == 6


def test_expired_keys_are_forgotten_by_their_users_next_keyed_create(
    short_memory: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    first = _post(short_memory, alice, "old", {"title": "t"})
    _post(short_memory, alice, "older", {"title": "u"})
    time.sleep(1.5)
    again = _post(short_memory, alice, "old", {"title": "t"})
    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"], "past IDEMPOTENCY_TTL_HOURS a key is new again"
    assert "idempotent-replayed" not in again.headers
    assert _keys(api_db, alice) == ["old"], "the expired keys are gone"
    assert _tasks(api_db, alice) == 3


def _expire(db: psycopg.Connection[Any], user: ApiUser, key: str) -> None:
    """As the table's owner: the key was stored two days ago, and has expired."""
    db.execute(
        "update idempotency_keys set created_at = created_at - interval '2 days',"
        " expires_at = expires_at - interval '2 days' where user_id = %s and key = %s",
        [user.id, key],
    )


def test_reusing_an_expired_key_forgets_only_expired_keys(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    """An expired key used again clears the user's expired keys first: were the unexpired ones
    cleared with them, a retry of another create still within IDEMPOTENCY_TTL_HOURS would make its
    task a second time (the mutation probe's Q03: no test held it)."""
    alice = new_user()
    _post(client, alice, "expired", {"title": "old"})
    kept = _post(client, alice, "kept", {"title": "recent"})
    _expire(api_db, alice, "expired")

    reused = _post(client, alice, "expired", {"title": "old"})
    retried = _post(client, alice, "kept", {"title": "recent"})

    assert reused.status_code == 201, reused.text
    assert "idempotent-replayed" not in reused.headers
    assert retried.status_code == 201, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.json()["id"] == kept.json()["id"]
    assert _tasks(api_db, alice) == 3, "old, recent, and old made again: the retry made nothing"
    assert sorted(_keys(api_db, alice)) == ["expired", "kept"]


def test_requests_reusing_an_expired_key_at_once_make_one_task_and_answer_as_its_replays(
    client: httpx.Client, api_db: psycopg.Connection[Any], api_db_url: str
) -> None:
    alice = new_user()
    body = {"title": "again, later"}
    first = _post(client, alice, "reused-after-expiry", body)
    _expire(api_db, alice, "reused-after-expiry")
    # Two requests (the user's share of the API's connections), lined up: each finds the expired key,
    # then waits to forget it on the row lock held here, so both forget it and then both store it.
    with ThreadPoolExecutor(max_workers=2) as pool, psycopg.connect(api_db_url) as locker:
        locker.execute(
            "select from idempotency_keys where user_id = %s and key = %s for update",
            [alice.id, "reused-after-expiry"],
        )
        sent = [pool.submit(_post, client, alice, "reused-after-expiry", body) for _ in range(2)]
        deadline = time.monotonic() + 30
        while api_db.execute(
            # The first waits on this lock, the second behind the first (the requests' own
            # activity is hidden from this role, but not whom they wait for).
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and cardinality(pg_blocking_pids(pid)) > 0"
        ).fetchone() != (2,):
            assert time.monotonic() < deadline, "both requests wait to forget the expired key"
            time.sleep(0.05)
    responses = [answer.result() for answer in sent]

    assert sorted(response.status_code for response in responses) == [201, 201], [r.text for r in responses]
    created = [response for response in responses if "idempotent-replayed" not in response.headers]
    replayed = [response for response in responses if response.headers.get("idempotent-replayed") == "true"]
    assert (len(created), len(replayed)) == (1, 1), "one first use of the key, and a replay of it"
    assert replayed[0].json() == created[0].json()
    assert created[0].json()["id"] != first.json()["id"], "past its expiry the key made a task anew"
    assert _tasks(api_db, alice) == 2, "the first use's task, and exactly one more"
    assert _keys(api_db, alice) == ["reused-after-expiry"]


def test_a_key_others_keep_storing_again_is_409_in_use_and_the_server_goes_on_serving(
    migrated_db_url: str, migrated_db: psycopg.Connection[Any]
) -> None:
    """Requests reusing an expired key at once can each find it stored again by another every time
    they forget it; past its tries a create says so (409, retry shortly), rather than raise the key's
    conflict as a unique key the API does not expect, which refuses every request until an isolation
    check completes (an hour away here)."""
    db = migrated_db
    db.autocommit = True
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice = new_user()
    with serving_client(create_app(settings)) as client:
        first = _post(client, alice, "raced", {"title": "first"})
        assert first.status_code == 201
        _expire(db, alice, "raced")
        # Deterministically what a burst of requests reusing the key does now and then: each time
        # this request forgets the expired key, the key is there again.
        db.execute(
            "create function public.keep_raced_key() returns trigger language plpgsql"
            " as $$ begin return null; end $$"
        )
        db.execute(
            "create trigger keep_raced_key before delete on idempotency_keys for each row"
            " when (old.key = 'raced') execute function public.keep_raced_key()"
        )
        in_use = _post(client, alice, "raced", {"title": "first"})
        after = client.get(alice.tasks_url, headers=alice.headers)
        db.execute("drop trigger keep_raced_key on idempotency_keys; drop function public.keep_raced_key()")
        retried = _post(client, alice, "raced", {"title": "first"})

    problem = assert_problem(in_use, 409, "idempotency-key-in-use")
    assert in_use.headers["retry-after"] == "1"
    assert "Send the same request again shortly" in problem["detail"]
    assert after.status_code == 200, "isolation is still trusted: the server serves on"
    assert [task["id"] for task in after.json()] == [first.json()["id"]], "nothing was created"
    assert retried.status_code == 201, "the same request, sent again, creates the task"
    assert retried.json()["id"] != first.json()["id"]
    assert _tasks(db, alice) == 2


def test_a_bodys_hash_is_the_one_its_key_was_stored_with_before_an_upgrade() -> None:
    """A retry after an upgrade that added a field to tasks replays, rather than 422: the stored hash
    of a body is what the API computes for the same body still (a new field left out is not hashed)."""
    assert request_hash(TaskCreate(title="Buy milk")) == (
        "eb070b7f0cb4fa5589334969be98412123ec45ad41b95647078fb90cfa61a7f0"
    )
    assert request_hash(TaskCreate(title="Buy milk", description="two litres", completed=True)) == (
        "842793670498206def1c9b2cd222bfe94b268202f9468df3a18dcc1b71c05b98"
    )
