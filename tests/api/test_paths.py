"""A path means what was sent (api/http/paths.py): an encoded slash is data within a segment, so a
path that holds one names no resource of the API, whatever route it would reach decoded."""

from typing import Any

import httpx
import psycopg

from tests.support import ApiUser, assert_problem, create_task


def test_an_encoded_slash_names_nothing_and_changes_nothing(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    """The server decodes %2F before routing: `tasks%2F5` reached task 5, and its DELETE deleted it,
    where a proxy, a WAF or a gateway's per-route rule in front saw another URL (RFC 3986, 2.2)."""
    task, _ = create_task(client, alice, title="Behind a proxy")
    task_id = task["id"]
    sent = [
        ("GET", f"{alice.tasks_url}%2F{task_id}"),
        ("HEAD", f"{alice.tasks_url}%2F{task_id}"),
        ("DELETE", f"{alice.tasks_url}%2f{task_id}"),
        ("PUT", f"/api%2F{alice.id}/tasks/{task_id}"),
        ("PATCH", f"{alice.task_url(task_id)}%2Fcomplete"),
        ("GET", f"/api%2F{alice.id}%2Ftasks"),
    ]

    answers = [
        client.request(method, path, headers=alice.headers, json={"title": "x"}) for method, path in sent
    ]

    for (method, path), answer in zip(sent, answers, strict=True):
        assert answer.status_code == 404, (method, path, answer.text)
        if method != "HEAD":
            assert_problem(answer, 404, "not-found")
            assert "%2F" in answer.json()["detail"]
    assert client.get(alice.task_url(task_id), headers=alice.headers).json() == task
    stored = api_db.execute("select title, completed from tasks where id = %s", [task_id]).fetchone()
    assert stored == ("Behind a proxy", False)


def test_an_encoded_slash_in_the_query_is_data_as_ever(client: httpx.Client, alice: ApiUser) -> None:
    create_task(client, alice, title="either/or")
    found = client.get(f"{alice.tasks_url}?q=either%2For", headers=alice.headers)
    assert found.status_code == 200, found.text
    assert [task["title"] for task in found.json()] == ["either/or"]
