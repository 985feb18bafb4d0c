"""Before the peer is timed: does it keep users apart? A peer that leaked would be measured doing less.

With user 1's token it reads its own task (so the check can see a row at all), then tries user 2's
task every way the scenarios could: get it, list user 2's tasks, change its title, create a task in
user 2's name; and sends a request without a token, and with a token for user 2 that is forged or
expired. Each must come back empty, refused or failing, and the database (read as the superuser) must
show user 2's task and task count unchanged.
"""

import json
import secrets
import urllib.error
import urllib.request
from typing import Any

import psycopg

from api.auth.dev_tokens import mint_token
from bench.dataset import first_task_id, user_id

_GET = "query ($id: BigInt!) { taskByRowId(rowId: $id) { rowId userId title } }"
_LIST = "query ($userId: String!) { allTasks(condition: {userId: $userId}) { nodes { rowId } } }"
_UPDATE = (
    "mutation ($id: BigInt!, $title: String!) {"
    " updateTaskByRowId(input: {rowId: $id, taskPatch: {title: $title}}) { task { rowId title } } }"
)
_CREATE = (
    "mutation ($userId: String!, $title: String!) {"
    " createTask(input: {task: {userId: $userId, title: $title}}) { task { rowId } } }"
)
_INTRUDER_TITLE = "written by another user"
_TOKEN_TTL_SECONDS = 300


class PeerNotIsolatedError(RuntimeError):
    """The peer showed or changed another user's data: timing it would compare unequal work."""


def _post(base_url: str, token: str | None, query: str, variables: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{base_url}/graphql", body, headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _user_two_state(superuser_url: str, task_id: int) -> tuple[object, ...]:
    with psycopg.connect(superuser_url) as connection:
        row = connection.execute(
            "select (select title from tasks where id = %s), count(*) from tasks where user_id = %s",
            [task_id, user_id(2)],
        ).fetchone()
    return tuple(row or ())


def check_isolation(base_url: str, secret: str, superuser_url: str, tasks_per_user: int) -> None:
    """Raises PeerNotIsolatedError unless user 1 can neither see nor change user 2's tasks."""
    token = mint_token(secret, user_id(1), ttl_seconds=_TOKEN_TTL_SECONDS)
    own_task, other_task = first_task_id(1, tasks_per_user), first_task_id(2, tasks_per_user)
    before = _user_two_state(superuser_url, other_task)
    failures = []

    status, own = _post(base_url, token, _GET, {"id": str(own_task)})
    if status != 200 or (own.get("data") or {}).get("taskByRowId", {}).get("userId") != user_id(1):
        failures.append(f"user 1 cannot read its own task {own_task}: {status} {own}")
    status, got = _post(base_url, token, _GET, {"id": str(other_task)})
    if (got.get("data") or {}).get("taskByRowId") is not None:
        failures.append(f"user 1 read user 2's task {other_task}: {got}")
    status, listed = _post(base_url, token, _LIST, {"userId": user_id(2)})
    if ((listed.get("data") or {}).get("allTasks") or {}).get("nodes"):
        failures.append(f"user 1 listed user 2's tasks: {listed}")
    status, updated = _post(base_url, token, _UPDATE, {"id": str(other_task), "title": _INTRUDER_TITLE})
    if ((updated.get("data") or {}).get("updateTaskByRowId") or {}).get("task") is not None:
        failures.append(f"user 1 updated user 2's task {other_task}: {updated}")
    status, created = _post(base_url, token, _CREATE, {"userId": user_id(2), "title": _INTRUDER_TITLE})
    if ((created.get("data") or {}).get("createTask") or {}).get("task") is not None:
        failures.append(f"user 1 created a task as user 2: {created}")
    status, anonymous = _post(base_url, None, _GET, {"id": str(own_task)})
    if status != 401:
        failures.append(f"a request without a token was answered {status}: {anonymous}")
    # A peer that reads the token without verifying it would let anyone be user 2, and do less work.
    forged = mint_token(secrets.token_urlsafe(48), user_id(2), ttl_seconds=_TOKEN_TTL_SECONDS)
    expired = mint_token(secret, user_id(2), ttl_seconds=-_TOKEN_TTL_SECONDS)
    for kind, bad_token in (("signed with another secret", forged), ("expired", expired)):
        status, answer = _post(base_url, bad_token, _GET, {"id": str(other_task)})
        if status != 401:
            failures.append(f"a token for user 2 {kind} was answered {status}: {answer}")

    after = _user_two_state(superuser_url, other_task)
    if after != before:
        failures.append(f"user 2's data changed: (title, task count) {before} -> {after}")
    if failures:
        raise PeerNotIsolatedError(
            "PostGraphile does not isolate users; not timing it:\n" + "\n".join(failures)
        )
