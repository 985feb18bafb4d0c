"""Each task endpoint's success path: status, headers, body, and what the database holds afterwards."""

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from api.app import create_app
from api.auth.dev_tokens import mint_token
from api.tasks.models import TaskCreate, TaskPublic, TaskUpdate
from tests.support import (
    SECRET,
    ApiUser,
    as_role,
    assert_problem,
    create_task,
    new_user,
    serving_client,
    settings_for,
    wait_until_it_waits_for,
)


def stored(db: psycopg.Connection[Any], task_id: int) -> tuple[Any, ...] | None:
    return db.execute(
        "select user_id, title, description, completed from tasks where id = %s", [task_id]
    ).fetchone()


def test_create_returns_the_task_with_its_location(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    response = client.post(
        alice.tasks_url,
        json={"title": "  Buy milk\t", "description": "two litres"},
        headers=alice.headers,
    )

    assert response.status_code == 201
    task = response.json()
    assert set(task) == {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "created_at",
        "updated_at",
        "version",
    }
    assert task["version"] == 1
    assert response.headers["etag"] == f'"{task["id"]}.1"', "the version is the one in the ETag"
    assert isinstance(task["id"], int)
    assert task["user_id"] == alice.id
    assert task["title"] == "Buy milk"
    assert task["description"] == "two litres"
    assert task["completed"] is False
    assert response.headers["location"] == f"/api/{alice.id}/tasks/{task['id']}"
    # The body is that task's representation, not the list's (RFC 9110, section 8.7).
    assert response.headers["content-location"] == response.headers["location"]
    for field in ("created_at", "updated_at"):
        assert datetime.fromisoformat(task[field]).tzinfo is not None, "RFC 3339 times carry a zone"
    assert stored(api_db, task["id"]) == (alice.id, "Buy milk", "two litres", False)


@pytest.mark.parametrize("user_id", ["用户", "q?x", "a b", "50%"])
def test_the_location_of_a_user_whose_id_a_url_must_encode_is_percent_encoded_and_leads_to_the_task(
    client: httpx.Client, api_db: psycopg.Connection[Any], user_id: str
) -> None:
    """A `sub` from another issuer (or made by hand) may hold what a path must encode: written bare,
    `Location: /api/q?x/tasks/5` names another path, and a non-ASCII one cannot be a header at all,
    a 500 after the task was stored (the mutation probe's R03: no test held it)."""
    user_id = f"{user_id}-{new_user().id}"  # a user of this test's own
    headers = {"Authorization": f"Bearer {mint_token(SECRET, user_id)}"}
    encoded = quote(user_id, safe="")
    created = client.post(f"/api/{encoded}/tasks", json={"title": "t"}, headers=headers)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert created.headers["location"] == f"/api/{encoded}/tasks/{task_id}"
    assert client.get(created.headers["location"], headers=headers).json() == created.json()
    assert stored(api_db, task_id) == (user_id, "t", None, False)
    # The next page's link names the user's path the same way.
    assert client.post(f"/api/{encoded}/tasks", json={"title": "u"}, headers=headers).status_code == 201
    first = client.get(f"/api/{encoded}/tasks", params={"limit": 1}, headers=headers)
    link = first.headers["link"]
    assert link.startswith(f"</api/{encoded}/tasks?"), link
    following = client.get(link[1 : link.index(">")], headers=headers)
    assert [task["title"] for task in first.json() + following.json()] == ["u", "t"]


def test_create_can_start_completed(client: httpx.Client, alice: ApiUser) -> None:
    assert create_task(client, alice, completed=True)[0]["completed"] is True


def test_first_write_creates_the_user_row_from_the_token(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    user = new_user(email="carol@example.com", name="Carol")
    user_row = "select id, email, name from users where id = %s"

    client.get(user.tasks_url, headers=user.headers)
    assert api_db.execute(user_row, [user.id]).fetchone() is None, "reads never write the user row"

    create_task(client, user)
    assert api_db.execute(user_row, [user.id]).fetchone() == (user.id, "carol@example.com", "Carol")


def test_get_returns_the_task(client: httpx.Client, alice: ApiUser) -> None:
    task = create_task(client, alice, description=None)[0]
    response = client.get(alice.task_url(task["id"]), headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == task


def test_put_changes_only_the_fields_sent(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task = create_task(client, alice, description="keep me")[0]

    response = client.put(alice.task_url(task["id"]), json={"title": " Renamed "}, headers=alice.headers)

    assert response.status_code == 200
    updated = response.json()
    assert updated["title"] == "Renamed"
    assert updated["description"] == "keep me"
    assert updated["completed"] is False
    assert updated["created_at"] == task["created_at"]
    assert updated["updated_at"] > task["updated_at"]
    assert updated["version"] == task["version"] + 1
    assert response.headers["etag"] == f'"{task["id"]}.{updated["version"]}"'
    assert stored(api_db, task["id"]) == (alice.id, "Renamed", "keep me", False)


def test_put_null_description_clears_it(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task = create_task(client, alice, description="old")[0]
    response = client.put(
        alice.task_url(task["id"]), json={"description": None, "completed": True}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json()["description"] is None
    assert stored(api_db, task["id"]) == (alice.id, "A task", None, True)


def test_put_with_nothing_to_change_returns_the_task_untouched(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task = create_task(client, alice)[0]
    as_stored = "select version, updated_at, (select count(*) from task_events e where e.task_id = t.id)"
    before = api_db.execute(f"{as_stored} from tasks t where id = %s", [task["id"]]).fetchone()
    response = client.put(alice.task_url(task["id"]), json={}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == task
    after = api_db.execute(f"{as_stored} from tasks t where id = %s", [task["id"]]).fetchone()
    assert after == before, "no new version, no new time, no event"


def test_delete_removes_the_task(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task = create_task(client, alice)[0]

    response = client.delete(alice.task_url(task["id"]), headers=alice.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert stored(api_db, task["id"]) is None
    again = client.delete(alice.task_url(task["id"]), headers=alice.headers)
    assert again.status_code == 404


def test_patch_without_body_toggles(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task = create_task(client, alice)[0]
    url = f"{alice.task_url(task['id'])}/complete"

    first = client.patch(url, headers=alice.headers)
    assert first.status_code == 200
    assert first.json()["completed"] is True
    # The body and its ETag are the task's, whose URL is not the one patched (RFC 9110, section 6.4.2).
    assert first.headers["content-location"] == alice.task_url(task["id"])
    assert client.get(first.headers["content-location"], headers=alice.headers).json() == first.json()
    assert stored(api_db, task["id"]) == (alice.id, "A task", None, True)

    second = client.patch(url, headers=alice.headers)
    assert second.json()["completed"] is False
    assert stored(api_db, task["id"]) == (alice.id, "A task", None, False)


@pytest.mark.parametrize("completed", [True, False])
def test_patch_with_a_value_sets_it_and_is_safe_to_retry(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], completed: bool
) -> None:
    task = create_task(client, alice, completed=not completed)[0]
    url = f"{alice.task_url(task['id'])}/complete"

    responses = [client.patch(url, json={"completed": completed}, headers=alice.headers) for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["completed"] for r in responses] == [completed, completed]
    assert responses[1].json()["updated_at"] == responses[0].json()["updated_at"], "a retry changes nothing"
    assert stored(api_db, task["id"]) == (alice.id, "A task", None, completed)


def test_request_id_is_returned(client: httpx.Client, alice: ApiUser) -> None:
    response = client.get(alice.tasks_url, headers={**alice.headers, "X-Request-ID": "a" * 32})
    assert response.headers["x-request-id"] == "a" * 32
    assert len(client.get(alice.tasks_url, headers=alice.headers).headers["x-request-id"]) == 32
    twice = [*alice.headers.items(), ("X-Request-ID", "first"), ("X-Request-ID", "second")]
    assert client.get(alice.tasks_url, headers=twice).headers.get_list("x-request-id") == ["first"]


def test_no_cache_may_keep_an_answer_with_a_users_tasks(client: httpx.Client, alice: ApiUser) -> None:
    """Each answer carried one user's tasks with no Cache-Control, so a browser was free to keep them on
    disk, on a shared computer too; only a shared cache is kept off by the Authorization header."""
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers)
    task_url = alice.task_url(created.json()["id"])
    etag = {"If-None-Match": created.headers["etag"]}
    answers = [
        created,
        client.get(alice.tasks_url, headers=alice.headers),
        client.head(alice.tasks_url, headers=alice.headers),
        client.get(alice.tasks_url, headers={**alice.headers, "If-None-Match": "*"}),
        client.get(task_url, headers=alice.headers),
        client.get(task_url, headers={**alice.headers, **etag}),
        client.put(task_url, json={"title": "u"}, headers=alice.headers),
        client.patch(f"{task_url}/complete", headers=alice.headers),
        client.delete(task_url, headers=alice.headers),
    ]
    assert [answer.status_code for answer in answers] == [201, 200, 200, 304, 200, 304, 200, 200, 204]
    assert [answer.headers.get("cache-control") for answer in answers] == ["no-store"] * len(answers)


def test_no_cache_may_keep_a_problem(
    client: httpx.Client, alice: ApiUser, bob: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    """Problems carried no Cache-Control: a 404 or 405 is cacheable by default (RFC 9111, 4.2.2), so a
    CDN could keep the 404 of a route a later release serves and a browser one user's 404, and a cache
    told to ignore Authorization would hand one user's 401, 403 or 412 to the next."""
    task = create_task(client, alice, title="kept")[0]
    task_url = alice.task_url(task["id"])
    json_headers = {**alice.headers, "Content-Type": "application/json"}
    answers = {
        401: client.get(alice.tasks_url),
        403: client.get(bob.tasks_url, headers=alice.headers),
        404: client.get(alice.task_url(task["id"] + 1_000_000), headers=alice.headers),
        405: client.request("TRACE", alice.tasks_url, headers=alice.headers),
        412: client.put(task_url, json={"title": "lost"}, headers={**alice.headers, "If-Match": '"0.0"'}),
        413: client.post(alice.tasks_url, content=b" " * 1024 * 1024, headers=json_headers),
        415: client.post(
            alice.tasks_url, content=b"x", headers={**alice.headers, "Content-Type": "text/plain"}
        ),
        422: client.put(task_url, json={"title": ""}, headers=alice.headers),
    }
    assert {status: answer.status_code for status, answer in answers.items()} == {s: s for s in answers}
    assert {answer.headers["content-type"] for answer in answers.values()} == {"application/problem+json"}
    assert {status: answer.headers.get("cache-control") for status, answer in answers.items()} == {
        status: "no-store" for status in answers
    }
    assert client.get(f"/no/such/{alice.id}").headers.get("cache-control") == "no-store"
    assert api_db.execute("select title from tasks where user_id = %s", [alice.id]).fetchall() == [("kept",)]


def test_health_and_readiness_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_no_cache_keeps_health_or_metrics_and_a_cache_asks_again_for_the_docs(
    client: httpx.Client, method: str
) -> None:
    """They carried no Cache-Control, so a proxy or a browser could keep a 200 by its own heuristics
    (RFC 9111, section 4.2.2): a load balancer behind a cache told ready after the database was gone,
    a scraper given old counts, a client reading the contract of the release before."""
    about_now = {path: client.request(method, path) for path in ("/healthz", "/readyz", "/metrics")}
    about_this_release = {path: client.request(method, path) for path in ("/openapi.json", "/docs", "/redoc")}
    assert {path: answer.status_code for path, answer in {**about_now, **about_this_release}.items()} == {
        path: 200 for path in [*about_now, *about_this_release]
    }
    assert {path: answer.headers.get("cache-control") for path, answer in about_now.items()} == {
        path: "no-store" for path in about_now
    }
    assert {path: answer.headers.get("cache-control") for path, answer in about_this_release.items()} == {
        path: "no-cache" for path in about_this_release
    }


def test_the_docs_assets_are_kept_only_for_this_release_and_answered_whole(client: httpx.Client) -> None:
    """StaticFiles sent them with Last-Modified and no Cache-Control (a browser could run the release
    before's Swagger UI with this release's page), answered a Range with a 206 (a malformed one with
    its own 400 in plain text, an unsatisfiable one with a bare 416) and a date with a 304, which no
    other answer of the API does (README); and offered `Accept-Ranges: bytes` for the Range it ignored."""
    path = "/docs/assets/swagger-ui.css"
    whole = client.get(path)
    assert whole.status_code == 200
    assert whole.headers["cache-control"] == "no-cache"
    assert "last-modified" not in whole.headers
    assert "accept-ranges" not in whole.headers, "a Range is answered whole, so none is offered"
    future = "Sat, 01 Jan 2101 00:00:00 GMT"
    asked = [
        {"Range": "bytes=0-1"},
        {"Range": "bytes=oops"},
        {"Range": "bytes=999999999-"},
        {"If-Modified-Since": future},
    ]
    answers = [client.get(path, headers=headers) for headers in asked]
    assert [(answer.status_code, answer.content == whole.content) for answer in answers] == [
        (200, True)
    ] * len(asked)
    unchanged = client.get(path, headers={"If-None-Match": whole.headers["etag"]})
    assert (unchanged.status_code, unchanged.headers["cache-control"]) == (304, "no-cache")


def test_unknown_route_is_a_problem(client: httpx.Client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


def test_every_write_brings_the_user_row_up_to_date(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    user = new_user(email="old@example.com", name="Old")
    task = create_task(client, user)[0]
    renamed = ApiUser(user.id, mint_token(SECRET, user.id, email="new@example.com", name="New"))
    user_row = "select email, name from users where id = %s"

    client.get(renamed.tasks_url, headers=renamed.headers)
    assert api_db.execute(user_row, [user.id]).fetchone() == ("old@example.com", "Old"), "reads write nothing"

    response = client.patch(f"{renamed.task_url(task['id'])}/complete", headers=renamed.headers)
    assert response.status_code == 200
    assert api_db.execute(user_row, [user.id]).fetchone() == ("new@example.com", "New")

    # The old token, still valid, used again: its claims are stored again, though this worker had
    # stored them once before (and so had left the upsert out of its second write).
    response = client.patch(f"{user.task_url(task['id'])}/complete", headers=user.headers)
    assert response.status_code == 200
    assert api_db.execute(user_row, [user.id]).fetchone() == ("old@example.com", "Old")


def test_a_claim_the_token_leaves_out_keeps_its_stored_value(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    user = new_user(email="kept@example.com", name="Kept")
    create_task(client, user)
    without_email = ApiUser(user.id, mint_token(SECRET, user.id, name="Renamed"))

    create_task(client, without_email)

    assert api_db.execute("select email, name from users where id = %s", [user.id]).fetchone() == (
        "kept@example.com",
        "Renamed",
    )


def test_two_tokens_writing_at_once_leave_the_row_following_the_next_write(
    client: httpx.Client, api_db: psycopg.Connection[Any], api_db_url: str
) -> None:
    """One worker, freshly started, and a user with two valid tokens. A write with the first waits
    on a lock, having seen the row as its token says; a write with the second stores its claims and
    commits meanwhile; then the first commits. The row then holds the second's claims, and the
    worker must not take the first's for stored: the next write with the first token stores them."""
    first = new_user(email="first@example.com", name="First")
    second = ApiUser(first.id, mint_token(SECRET, first.id, email="second@example.com", name="Second"))
    waiting, other = create_task(client, first)[0], create_task(client, first)[0]  # the row: first's claims
    user_row = "select email, name from users where id = %s"
    with (
        serving_client(create_app(settings_for(as_role(api_db_url)))) as worker,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        with psycopg.connect(api_db_url) as holder:
            holder.execute("select from tasks where id = %s for update", [waiting["id"]])
            sent = pool.submit(
                worker.put, first.task_url(waiting["id"]), json={"title": "x"}, headers=first.headers
            )
            wait_until_it_waits_for(holder, sent)
            meanwhile = worker.patch(f"{second.task_url(other['id'])}/complete", headers=second.headers)
            assert meanwhile.status_code == 200, meanwhile.text
            assert api_db.execute(user_row, [first.id]).fetchone() == ("second@example.com", "Second")
            holder.rollback()
        assert sent.result().status_code == 200, sent.result().text
        assert api_db.execute(user_row, [first.id]).fetchone() == ("second@example.com", "Second")

        later = worker.patch(f"{first.task_url(other['id'])}/complete", headers=first.headers)
        assert later.status_code == 200, later.text
        assert api_db.execute(user_row, [first.id]).fetchone() == ("first@example.com", "First")


def test_a_user_row_deleted_meanwhile_is_stored_again_by_the_next_write(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    """Once a worker has stored a user's row, its writes for them leave the upsert out; when the
    row has gone meanwhile (a DBA deleted the user, and so their tasks), the write stores it again."""
    user = new_user(email="erin@example.com", name="Erin")
    create_task(client, user)
    create_task(client, user)  # the row is stored: this write was sent without the upsert
    api_db.execute("delete from users where id = %s", [user.id])

    task = create_task(client, user, title="After")[0]

    assert api_db.execute("select email, name from users where id = %s", [user.id]).fetchone() == (
        "erin@example.com",
        "Erin",
    )
    assert api_db.execute("select id, title from tasks where user_id = %s", [user.id]).fetchall() == [
        (task["id"], "After")
    ]


def test_a_user_row_deleted_while_a_write_stores_it_is_stored_again_by_that_write(
    client: httpx.Client, api_db: psycopg.Connection[Any], api_db_url: str
) -> None:
    """A write that carries the upsert finds the user's row current and leaves it; a DBA deletes the
    user before the task's foreign key looks for the row. That write was a 500; it is sent again, its
    upsert stores the row again, and the task is created, as the next write would have done."""
    user = new_user(email="fay@example.com", name="Fay")
    api_db.execute("insert into users (id, email, name) values (%s, 'fay@example.com', 'Fay')", [user.id])
    with ThreadPoolExecutor(max_workers=1) as pool, psycopg.connect(api_db_url) as dba:
        dba.execute("delete from users where id = %s", [user.id])
        sent = pool.submit(client.post, user.tasks_url, json={"title": "During"}, headers=user.headers)
        wait_until_it_waits_for(dba, sent)
        dba.commit()
        created = sent.result()

    assert created.status_code == 201, created.text
    assert api_db.execute("select email, name from users where id = %s", [user.id]).fetchone() == (
        "fay@example.com",
        "Fay",
    )
    assert api_db.execute("select id, title from tasks where user_id = %s", [user.id]).fetchall() == [
        (created.json()["id"], "During")
    ]


@pytest.mark.parametrize(
    "title",
    ["'); drop table tasks; --", "back\\slash \\' quote", "$$dollar$$ :name %(x)s %s ?", "E'\\x41'"],
)
def test_values_are_stored_exactly_as_sent(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], title: str
) -> None:
    """Values are bound by psycopg, never spliced into SQL, whichever way the transaction travels."""
    task = create_task(client, alice, title=title, description=title)[0]
    assert (task["title"], task["description"]) == (title, title)
    assert stored(api_db, task["id"]) == (alice.id, title, title, False)
    listed = client.get(alice.tasks_url, params={"q": title}, headers=alice.headers).json()
    assert [t["id"] for t in listed] == [task["id"]]


# A value for every field a client writes, none of them its default, and another for each. A field
# added to the models without a value here fails the first assertion below; one that a statement of
# api/tasks/queries.py leaves out (each create names its columns) comes back as its default.
WRITTEN: dict[str, Any] = {"title": "Every field", "description": "all of them", "completed": True}
CHANGED: dict[str, Any] = {"title": "Changed", "description": "changed too", "completed": False}


def stored_fields(db: psycopg.Connection[Any], task_id: int) -> dict[str, Any]:
    """The task as the database holds it, rendered as the API renders a task."""
    row = db.execute("select to_jsonb(t) from tasks as t where id = %s", [task_id]).fetchone()
    assert row is not None
    return TaskPublic.model_validate(row[0]).model_dump(mode="json")


@pytest.mark.parametrize("keyed", [False, True], ids=["create", "create with an Idempotency-Key"])
def test_every_field_a_client_writes_is_stored_by_a_create_and_changed_by_an_update(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], keyed: bool
) -> None:
    assert set(WRITTEN) == set(CHANGED) == set(TaskCreate.model_fields) == set(TaskUpdate.model_fields)
    assert all(WRITTEN[name] != field.default for name, field in TaskCreate.model_fields.items())
    assert all(WRITTEN[name] != CHANGED[name] for name in WRITTEN)
    headers = {**alice.headers, **({"Idempotency-Key": f"every-field-{keyed}"} if keyed else {})}

    created = client.post(alice.tasks_url, json=WRITTEN, headers=headers)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert {name: created.json()[name] for name in WRITTEN} == WRITTEN
    assert {name: stored_fields(api_db, task_id)[name] for name in WRITTEN} == WRITTEN

    updated = client.put(alice.task_url(task_id), json=CHANGED, headers=alice.headers)
    assert updated.status_code == 200, updated.text
    assert {name: updated.json()[name] for name in CHANGED} == CHANGED
    assert {name: stored_fields(api_db, task_id)[name] for name in CHANGED} == CHANGED


def test_a_rule_of_the_databases_own_bookkeeping_refusing_a_write_is_a_500_not_the_clients_422(
    migrated_db_url: str,
) -> None:
    """A CHECK on a table no request writes (schema app) was answered 422 `validation-error`, "The
    database refuses this value by its rule task_event_counts_events_check", for a valid body and even
    for a DELETE with none: a probe's counts row gone below none made every user's writes that. Only a
    rule of the tables a request writes is about the client's input."""
    alice = new_user()
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        owner.execute("alter table app.task_event_counts add constraint by_hand check (events < 0) not valid")
        with serving_client(create_app(settings_for(migrated_db_url))) as api:
            answer = api.post(alice.tasks_url, json={"title": "fine"}, headers=alice.headers)
        assert_problem(answer, 500, "internal-error")
        assert owner.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)
