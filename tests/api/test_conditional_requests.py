"""No lost updates (RFC 9110 conditional requests): strong ETags, If-Match decided in the write's own
statement, If-None-Match answered with 304."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from tests.support import (
    ApiUser,
    assert_problem,
    create_task,
    new_user,
    serving_client,
    settings_for,
    wait_until_it_waits_for,
)

Task = dict[str, Any]


def _title_in_db(api_db: psycopg.Connection[Any], task_id: int) -> str:
    row = api_db.execute("select title from tasks where id = %s", [task_id]).fetchone()
    assert row is not None
    return str(row[0])


def test_every_single_task_response_carries_an_etag_that_moves_with_the_content(
    client: httpx.Client, alice: ApiUser
) -> None:
    task, created = create_task(client, alice, title="first")
    url = alice.task_url(task["id"])
    read = client.get(url, headers=alice.headers).headers["etag"]
    same = client.put(url, json={"title": "first"}, headers=alice.headers).headers["etag"]
    changed = client.put(url, json={"title": "second"}, headers=alice.headers).headers["etag"]
    toggled = client.patch(f"{url}/complete", headers=alice.headers).headers["etag"]
    assert created == read == same, "a write that changes nothing keeps the ETag"
    assert len({read, changed, toggled}) == 3
    assert all(tag.startswith('"') and tag.endswith('"') for tag in (created, changed, toggled)), "strong"


def test_if_none_match_answers_304_without_a_body(client: httpx.Client, alice: ApiUser) -> None:
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])
    for sent in (tag, f"W/{tag}", f'"0.1", {tag}', "*"):
        response = client.get(url, headers={**alice.headers, "If-None-Match": sent})
        assert response.status_code == 304, sent
        assert response.content == b""
        assert response.headers["etag"] == tag
    assert client.get(url, headers={**alice.headers, "If-None-Match": '"0.1"'}).status_code == 200


def test_dates_and_ranges_are_not_conditions(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    """No answer carries Last-Modified, so there is no date to compare (README): a date in the future
    is no 304, one in the past no 412, and a Range is no 206; the ETag is the validator."""
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])
    future, past = "Sat, 01 Jan 2101 00:00:00 GMT", "Sat, 01 Jan 2000 00:00:00 GMT"
    read = client.get(url, headers={**alice.headers, "If-Modified-Since": future, "Range": "bytes=0-1"})
    assert (read.status_code, read.headers["etag"], read.json()) == (200, tag, task)
    assert "last-modified" not in read.headers
    written = client.put(url, json={"title": "later"}, headers={**alice.headers, "If-Unmodified-Since": past})
    assert written.status_code == 200
    assert _title_in_db(api_db, task["id"]) == "later"


def test_a_stale_if_match_changes_nothing_and_gets_412(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task, stale = create_task(client, alice)
    url = alice.task_url(task["id"])
    current = client.put(url, json={"title": "changed in another tab"}, headers=alice.headers).headers["etag"]
    conditional = {**alice.headers, "If-Match": stale}
    for response in (
        client.put(url, json={"title": "lost update"}, headers=conditional),
        client.patch(f"{url}/complete", headers=conditional),
        client.patch(f"{url}/complete", json={"completed": True}, headers=conditional),
        client.delete(url, headers=conditional),
        client.put(url, json={}, headers=conditional),
    ):
        assert_problem(response, 412, "precondition-failed")
        assert response.headers["etag"] == current
    assert _title_in_db(api_db, task["id"]) == "changed in another tab"
    assert client.get(url, headers=alice.headers).json()["completed"] is False


def test_a_matching_if_match_writes(client: httpx.Client, alice: ApiUser) -> None:
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])
    updated = client.put(url, json={"title": "new"}, headers={**alice.headers, "If-Match": f'"0.1", {tag}'})
    assert updated.status_code == 200
    assert (
        client.put(url, json={"title": "any"}, headers={**alice.headers, "If-Match": "*"}).status_code == 200
    )
    weak = client.delete(url, headers={**alice.headers, "If-Match": f"W/{updated.headers['etag']}"})
    assert weak.status_code == 412, "If-Match compares strongly"
    current = client.get(url, headers=alice.headers).headers["etag"]
    assert client.delete(url, headers={**alice.headers, "If-Match": current}).status_code == 204


def test_a_missing_task_stays_404_whatever_if_match_says(
    client: httpx.Client, alice: ApiUser, bob: ApiUser
) -> None:
    task, tag = create_task(client, alice)
    for user, url in ((alice, alice.task_url(999_999_999)), (bob, bob.task_url(task["id"]))):
        assert (
            client.put(url, json={"title": "x"}, headers={**user.headers, "If-Match": tag}).status_code == 404
        )


def test_an_etag_of_another_task_never_matches(client: httpx.Client, alice: ApiUser) -> None:
    _, first_tag = create_task(client, alice)
    second, _ = create_task(client, alice, title="second")
    response = client.put(
        alice.task_url(second["id"]), json={"title": "x"}, headers={**alice.headers, "If-Match": first_tag}
    )
    assert response.status_code == 412


def test_a_field_sent_on_two_lines_is_one_list(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])

    def on_two_lines(field: str, second: str) -> list[tuple[str, str]]:
        return [*alice.headers.items(), (field, '"0.1"'), (field, second)]

    not_modified = client.get(url, headers=on_two_lines("If-None-Match", tag))
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    updated = client.put(url, json={"title": "new"}, headers=on_two_lines("If-Match", tag))
    assert updated.status_code == 200, updated.text
    stale = client.put(url, json={"title": "lost update"}, headers=on_two_lines("If-Match", tag))
    assert stale.status_code == 412
    assert _title_in_db(api_db, task["id"]) == "new"
    malformed = client.put(url, json={"title": "x"}, headers=on_two_lines("If-Match", "no-quotes"))
    assert malformed.status_code == 422


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("value", ["no-quotes", '"unterminated', '"a" "b"', ","])
def test_a_malformed_entity_tag_list_is_422(
    client: httpx.Client, alice: ApiUser, header: str, value: str
) -> None:
    task, _ = create_task(client, alice)
    url = alice.task_url(task["id"])
    if header == "If-Match":
        response = client.put(url, json={"title": "x"}, headers={**alice.headers, header: value})
    else:
        response = client.get(url, headers={**alice.headers, header: value})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [f"header.{header.lower()}"]


def test_empty_list_elements_around_the_tags_are_ignored(client: httpx.Client, alice: ApiUser) -> None:
    """RFC 9110, section 5.6.1.2: a recipient accepts and ignores empty list elements."""
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])
    for sent in (f", {tag}", f'"0.1",, {tag} ,', f",{tag}, ,"):
        response = client.get(url, headers={**alice.headers, "If-None-Match": sent})
        assert response.status_code == 304, sent
    written = client.put(url, json={"title": "x"}, headers={**alice.headers, "If-Match": f",{tag},"})
    assert written.status_code == 200, written.text
    assert written.json()["title"] == "x"


def test_a_get_whose_if_match_names_another_version_is_412(client: httpx.Client, alice: ApiUser) -> None:
    """RFC 9110, section 13.1.1: an origin server evaluates If-Match before any method."""
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])
    stale = client.get(url, headers={**alice.headers, "If-Match": '"0.1"'})
    assert_problem(stale, 412, "precondition-failed")
    assert stale.headers["etag"] == tag
    for sent in (tag, "*"):
        assert client.get(url, headers={**alice.headers, "If-Match": sent}).status_code == 200, sent


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", "", {"title": "x"}), ("PATCH", "/complete", None), ("DELETE", "", None)],
)
def test_a_write_whose_if_none_match_names_the_task_is_412_and_changes_nothing(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], method: str, path: str, body: Any
) -> None:
    """RFC 9110, section 13.1.2: `*` means "only if the task does not exist", and a named version
    "only if the task has moved on from it"; both are false for the task as it is."""
    task, tag = create_task(client, alice, title="first")
    url = alice.task_url(task["id"]) + path
    for sent in ("*", tag, f'"0.1", W/{tag}'):
        refused = client.request(method, url, json=body, headers={**alice.headers, "If-None-Match": sent})
        assert refused.status_code == 412, (sent, refused.text)
        assert refused.headers["etag"] == tag
    row = api_db.execute("select title, completed from tasks where id = %s", [task["id"]]).fetchone()
    assert row == ("first", False), "nothing changed"
    passed = client.request(method, url, json=body, headers={**alice.headers, "If-None-Match": '"0.1"'})
    assert passed.status_code in (200, 204), passed.text


def test_two_writes_with_the_same_if_match_cannot_both_win(client: httpx.Client, alice: ApiUser) -> None:
    task, tag = create_task(client, alice)
    url = alice.task_url(task["id"])

    def update(n: int) -> int:
        return client.put(
            url, json={"title": f"tab {n}"}, headers={**alice.headers, "If-Match": tag}
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(update, range(8)))
    assert statuses == [200] + [412] * 7


@pytest.fixture
def strict_api(api_db_url: str) -> Iterator[httpx.Client]:
    with serving_client(create_app(settings_for(api_db_url, require_if_match=True))) as client:
        yield client


def test_require_if_match_refuses_blind_writes_with_428(strict_api: httpx.Client) -> None:
    user = new_user()
    task, tag = create_task(strict_api, user)
    url = user.task_url(task["id"])
    for response in (
        strict_api.put(url, json={"title": "blind"}, headers=user.headers),
        strict_api.patch(f"{url}/complete", headers=user.headers),
        strict_api.delete(url, headers=user.headers),
    ):
        assert_problem(response, 428, "precondition-required")
    assert (
        strict_api.put(url, json={"title": "seen"}, headers={**user.headers, "If-Match": tag}).status_code
        == 200
    )


# A write to a task: its method, its path under the task's URL, and its JSON body.
Write = tuple[str, str, Any]
_WRITES = [
    pytest.param(("PUT", "", {"title": "lost update"}), id="PUT"),
    pytest.param(("PATCH", "/complete", None), id="PATCH-complete"),
    pytest.param(("DELETE", "", None), id="DELETE"),
]


def _send(client: httpx.Client, user: ApiUser, task_id: int, write: Write, if_match: str) -> httpx.Response:
    method, path, body = write
    return client.request(
        method, user.task_url(task_id) + path, json=body, headers={**user.headers, "If-Match": if_match}
    )


def _a_write_that_loses_a_race(
    client: httpx.Client, user: ApiUser, api_db_url: str, racing: str, write: Write
) -> tuple[Task, httpx.Response]:
    """A new task of `user`'s, and the answer to `write` sent with the task's current ETag while
    another transaction has run `racing` on the task and holds its row lock: the request waits on
    that lock, and the other transaction commits first."""
    task, tag = create_task(client, user)
    with ThreadPoolExecutor(max_workers=1) as pool, psycopg.connect(api_db_url) as other:
        other.execute(racing, [task["id"]])
        sent = pool.submit(_send, client, user, task["id"], write, tag)
        wait_until_it_waits_for(other, sent)
        other.commit()
        return task, sent.result()


@pytest.mark.parametrize("write", _WRITES)
def test_a_write_that_loses_a_race_gets_412_with_the_etag_of_the_winner(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], api_db_url: str, write: Write
) -> None:
    """The If-Match is current when the request arrives, and stale once the write it waited for
    commits: the 412 names the version that write made, so a client retrying with it succeeds."""
    task, refused = _a_write_that_loses_a_race(
        client, alice, api_db_url, "update tasks set title = 'changed in another tab' where id = %s", write
    )
    assert_problem(refused, 412, "precondition-failed")
    assert refused.headers["etag"] == f'"{task["id"]}.2"'
    row = api_db.execute("select title, completed, version from tasks where id = %s", [task["id"]]).fetchone()
    assert row == ("changed in another tab", False, 2), "the winner's write stands, and nothing else"
    retried = _send(client, alice, task["id"], write, refused.headers["etag"])
    assert retried.status_code in (200, 204), retried.text


@pytest.mark.parametrize("none_match", ["*", "current"])
@pytest.mark.parametrize("write", _WRITES)
def test_a_write_both_of_whose_conditions_fail_is_refused_for_if_match_first(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], write: Write, none_match: str
) -> None:
    """RFC 9110, section 13.2.2: If-Match is evaluated before If-None-Match, so its 412 is the one
    a client is told of, whichever form If-None-Match takes."""
    method, path, body = write
    task, stale = create_task(client, alice, title="first")
    current = client.put(alice.task_url(task["id"]), json={"title": "second"}, headers=alice.headers)
    headers = {
        **alice.headers,
        "If-Match": stale,
        "If-None-Match": "*" if none_match == "*" else current.headers["etag"],
    }
    refused = client.request(method, alice.task_url(task["id"]) + path, json=body, headers=headers)
    problem = assert_problem(refused, 412, "precondition-failed")
    assert "the ETag you sent in If-Match" in problem["detail"], problem
    assert refused.headers["etag"] == current.headers["etag"]
    row = api_db.execute("select title, completed from tasks where id = %s", [task["id"]]).fetchone()
    assert row == ("second", False), "nothing changed"


@pytest.mark.parametrize("write", _WRITES)
def test_a_write_whose_if_none_match_names_the_version_a_racing_write_makes_is_412(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], api_db_url: str, write: Write
) -> None:
    """If-None-Match is decided in the write's own statement, as If-Match is: checked by a read
    before the write, the version another transaction made while the write waited for its lock
    slipped between the two, and the write was made on top of the very version it refused."""
    method, path, body = write
    task, _ = create_task(client, alice)
    named = f'"{task["id"]}.2"'  # the version the other transaction is making
    with ThreadPoolExecutor(max_workers=1) as pool, psycopg.connect(api_db_url) as other:
        other.execute("update tasks set title = 'changed in another tab' where id = %s", [task["id"]])
        sent = pool.submit(
            client.request,
            method,
            alice.task_url(task["id"]) + path,
            json=body,
            headers={**alice.headers, "If-None-Match": named},
        )
        wait_until_it_waits_for(other, sent)
        other.commit()
        refused = sent.result()
    problem = assert_problem(refused, 412, "precondition-failed")
    assert "If-None-Match" in problem["detail"]
    assert refused.headers["etag"] == named
    row = api_db.execute("select title, completed, version from tasks where id = %s", [task["id"]]).fetchone()
    assert row == ("changed in another tab", False, 2), "the winner's write stands, and nothing else"


@pytest.mark.parametrize("write", _WRITES)
def test_a_write_that_loses_a_race_to_a_delete_gets_404(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], api_db_url: str, write: Write
) -> None:
    """As any later request for the task would: it no longer exists, so no ETag can name it."""
    task, gone = _a_write_that_loses_a_race(
        client, alice, api_db_url, "delete from tasks where id = %s", write
    )
    assert_problem(gone, 404, "not-found")
    assert "etag" not in gone.headers
    assert api_db.execute("select count(*) from tasks where id = %s", [task["id"]]).fetchone() == (0,)


def test_the_task_list_has_no_etag_to_match(client: httpx.Client, alice: ApiUser) -> None:
    """RFC 9110, sections 13.1.1 and 13.1.2, for a resource that exists and has no entity-tag:
    If-Match is true only as `*`, If-None-Match false only as `*` (304 for a read)."""
    task, tag = create_task(client, alice)

    def listed(method: str = "GET", **conditions: str) -> httpx.Response:
        return client.request(method, alice.tasks_url, headers={**alice.headers, **conditions})

    for sent in ('"nope"', tag, f"W/{tag}"):
        refused = listed(**{"If-Match": sent})
        assert refused.status_code == 412, (sent, refused.text)
        assert_problem(refused, 412, "precondition-failed")
        assert "etag" not in refused.headers
    for method in ("GET", "HEAD"):
        not_modified = listed(method, **{"If-None-Match": "*"})
        assert (not_modified.status_code, not_modified.content) == (304, b""), method
        assert "etag" not in not_modified.headers
    for conditions in ({"If-Match": "*"}, {"If-None-Match": tag}, {"If-Match": "*", "If-None-Match": '"x"'}):
        answered = listed(**conditions)
        assert answered.status_code == 200, (conditions, answered.text)
        assert [listed_task["id"] for listed_task in answered.json()] == [task["id"]]
    for header in ("If-Match", "If-None-Match"):
        malformed = listed(**{header: "garbage"})
        assert malformed.status_code == 422, malformed.text
        assert [error["field"] for error in malformed.json()["errors"]] == [f"header.{header.lower()}"]


@pytest.mark.parametrize(
    ("conditions", "status"),
    [
        ({"If-Match": '"nope"'}, 412),
        ({"If-None-Match": "*"}, 412),
        ({"If-Match": "*", "If-None-Match": "*"}, 412),
        ({"If-Match": "garbage"}, 422),
        ({"If-None-Match": "garbage"}, 422),
    ],
)
def test_a_create_whose_precondition_fails_creates_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], conditions: dict[str, str], status: int
) -> None:
    """RFC 9110, section 13.2.2: a false If-Match, or If-None-Match `*` on the list, which exists,
    is a 412 and the method is not performed; a malformed one is a 422."""
    user = new_user()
    headers = {**user.headers, **conditions, "Idempotency-Key": "refused"}
    refused = client.post(user.tasks_url, json={"title": "x"}, headers=headers)
    assert refused.status_code == status, refused.text
    assert "location" not in refused.headers
    for stored in (
        "select count(*) from tasks where user_id = %s",
        "select count(*) from idempotency_keys where user_id = %s",
        "select count(*) from users where id = %s",
    ):
        assert api_db.execute(stored, [user.id]).fetchone() == (0,), stored


def test_a_create_whose_preconditions_hold_creates_the_task(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    user = new_user()
    for conditions in ({"If-Match": "*"}, {"If-None-Match": '"x"'}, {"If-None-Match": 'W/"1.1", "2.1"'}):
        created = client.post(user.tasks_url, json={"title": "x"}, headers={**user.headers, **conditions})
        assert created.status_code == 201, (conditions, created.text)
    assert api_db.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone() == (3,)
