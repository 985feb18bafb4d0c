"""Another user's task does not exist for you: 404 on every endpoint, and the task is unchanged.

Here the path names the caller (so the 403 check passes) and the task id is someone else's:
only row-level security stands between the caller and the row.
"""

from typing import Any

import httpx
import psycopg
import pytest

from tests.support import ApiUser

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
