"""Isolation, tried by a machine: random sequences of requests from several users against a model.

A hypothesis `RuleBasedStateMachine` drives the real HTTP API (a live uvicorn) as a few users who
create, update, toggle, complete, delete and list their tasks, page through them, and try to reach
each other's. A plain in-memory model says what each user owns. After every step every user's list
must be exactly what the model says (ids, titles, descriptions, completion and the timestamps their
last write returned), and every cross-user attempt must have been a 403 or 404 that changed nothing.
"""

import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from api.tasks.listing import PAGE_SIZE_MAX
from tests.support import ApiUser, assert_problem, new_user

USERS = 3
MAX_TASKS = PAGE_SIZE_MAX  # the list's largest page: the whole model fits in one

_NEXT = re.compile(r'<([^>]+)>; rel="next"')
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# LIKE's wildcards and escape character, a quote, and letters whose case Postgres and Python agree on
# only for ASCII; searches use ASCII only, so non-ASCII letters never decide whether a task matches.
_TEXT = st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("éЖß中😀")
_PADDING = st.text(alphabet=" \t", max_size=2)
_CORE_TITLE = st.text(alphabet=_TEXT, min_size=1, max_size=12).filter(lambda t: t.strip() != "")
TITLES = st.builds(lambda left, core, right: left + core + right, _PADDING, _CORE_TITLE, _PADDING)
DESCRIPTIONS = st.none() | st.text(alphabet=_TEXT | st.just("\n"), max_size=30)
SEARCHES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=3)


def _fold(text: str) -> str:
    return text.translate(_ASCII_UPPER)


@dataclass
class ModelTask:
    id: int
    title: str
    description: str | None
    completed: bool
    created_at: str
    updated_at: str
    updated_seq: int

    def matches(self, completed: bool | None, search: str | None) -> bool:
        if completed is not None and self.completed != completed:
            return False
        if not search:
            return True
        needle = _fold(search)
        return needle in _fold(self.title) or needle in _fold(self.description or "")


@dataclass
class Figures:
    requests: int = 0
    steps: int = 0
    examples: int = 0
    cross_user_attempts: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def _visible(task: dict[str, Any]) -> tuple[str, str | None, bool, str, str]:
    return (task["title"], task["description"], task["completed"], task["created_at"], task["updated_at"])


class TaskMachine(RuleBasedStateMachine):
    """Subclassed per test with the live API's client bound in."""

    client: ClassVar[httpx.Client]
    figures: ClassVar[Figures]

    def __init__(self) -> None:
        super().__init__()
        self.users = [new_user(email=f"machine{n}@example.com") for n in range(USERS)]
        self.tasks: dict[str, dict[int, ModelTask]] = {user.id: {} for user in self.users}
        self.gone: dict[str, list[int]] = {user.id: [] for user in self.users}
        self.clock = 0
        self.figures.examples += 1

    # -- plumbing ----------------------------------------------------------------------------

    def request(self, user: ApiUser, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, headers=user.headers, **kwargs)
        self.figures.requests += 1
        self.figures.statuses[response.status_code] = self.figures.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{method} {url} {kwargs}: {response.status_code} {response.text}"
        return response

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def remember(self, user: ApiUser, body: dict[str, Any], *, changed: bool) -> None:
        previous = self.tasks[user.id].get(body["id"])
        seq = self.tick() if changed or previous is None else previous.updated_seq
        self.tasks[user.id][body["id"]] = ModelTask(
            id=body["id"],
            title=body["title"],
            description=body["description"],
            completed=body["completed"],
            created_at=body["created_at"],
            updated_at=body["updated_at"],
            updated_seq=seq,
        )

    def owned(self, user: ApiUser, task: ModelTask, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["id"] == task.id
        assert body["user_id"] == user.id
        assert body["created_at"] == task.created_at
        return body

    def draw_owned(self, data: st.DataObject) -> tuple[ApiUser, ModelTask]:
        user = data.draw(st.sampled_from([u for u in self.users if self.tasks[u.id]]), label="owner")
        task = data.draw(
            st.sampled_from(sorted(self.tasks[user.id].values(), key=lambda t: t.id)), label="task"
        )
        return user, task

    def has_tasks(self) -> bool:
        return any(self.tasks.values())

    def list_all(self, user: ApiUser, **params: Any) -> list[dict[str, Any]]:
        response = self.request(user, "GET", user.tasks_url, params={**params, "limit": MAX_TASKS})
        assert response.status_code == 200, response.text
        assert "link" not in response.headers
        tasks: list[dict[str, Any]] = response.json()
        return tasks

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: sum(len(tasks) for tasks in self.tasks.values()) < MAX_TASKS - 10)
    @rule(
        data=st.data(),
        title=TITLES,
        description=DESCRIPTIONS,
        completed=st.none() | st.booleans(),
    )
    def create(
        self, data: st.DataObject, title: str, description: str | None, completed: bool | None
    ) -> None:
        user = data.draw(st.sampled_from(self.users), label="user")
        payload: dict[str, Any] = {"title": title}
        if description is not None or data.draw(st.booleans(), label="send null description"):
            payload["description"] = description
        if completed is not None:
            payload["completed"] = completed
        response = self.request(user, "POST", user.tasks_url, json=payload)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["user_id"] == user.id
        assert body["title"] == title.strip()
        assert body["description"] == description
        assert body["completed"] is bool(completed)
        assert body["created_at"] == body["updated_at"]
        assert response.headers["location"] == user.task_url(body["id"])
        assert all(body["id"] not in tasks for tasks in self.tasks.values())
        self.remember(user, body, changed=True)

    @precondition(has_tasks)
    @rule(
        data=st.data(),
        title=st.none() | TITLES,
        description=st.none() | st.just("") | DESCRIPTIONS.map(lambda d: d or None),
        clear_description=st.booleans(),
        completed=st.none() | st.booleans(),
    )
    def update(
        self,
        data: st.DataObject,
        title: str | None,
        description: str | None,
        clear_description: bool,
        completed: bool | None,
    ) -> None:
        user, task = self.draw_owned(data)
        payload: dict[str, Any] = {}
        expected = replace(task)
        if title is not None:
            payload["title"] = title
            expected.title = title.strip()
        if description is not None or clear_description:
            payload["description"] = description
            expected.description = description
        if completed is not None:
            payload["completed"] = completed
            expected.completed = completed
        body = self.owned(user, task, self.request(user, "PUT", user.task_url(task.id), json=payload))
        assert _visible(body)[:3] == (expected.title, expected.description, expected.completed)
        changed = (expected.title, expected.description, expected.completed) != (
            task.title,
            task.description,
            task.completed,
        )
        assert (body["updated_at"] != task.updated_at) is changed, "updated_at moves only on a real change"
        self.remember(user, body, changed=changed)

    @precondition(has_tasks)
    @rule(data=st.data())
    def toggle(self, data: st.DataObject) -> None:
        user, task = self.draw_owned(data)
        body = self.owned(user, task, self.request(user, "PATCH", f"{user.task_url(task.id)}/complete"))
        assert body["completed"] is not task.completed
        assert (body["title"], body["description"]) == (task.title, task.description)
        self.remember(user, body, changed=True)

    @precondition(has_tasks)
    @rule(data=st.data(), completed=st.booleans())
    def set_completed(self, data: st.DataObject, completed: bool) -> None:
        user, task = self.draw_owned(data)
        response = self.request(
            user, "PATCH", f"{user.task_url(task.id)}/complete", json={"completed": completed}
        )
        body = self.owned(user, task, response)
        assert body["completed"] is completed
        assert (body["updated_at"] == task.updated_at) is (completed == task.completed)
        self.remember(user, body, changed=completed != task.completed)

    @precondition(has_tasks)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        user, task = self.draw_owned(data)
        response = self.request(user, "DELETE", user.task_url(task.id))
        assert response.status_code == 204, response.text
        assert response.content == b""
        del self.tasks[user.id][task.id]
        self.gone[user.id].append(task.id)

    @precondition(lambda self: any(self.gone.values()))
    @rule(data=st.data(), method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
    def deleted_task_is_gone(self, data: st.DataObject, method: str) -> None:
        user = data.draw(st.sampled_from([u for u in self.users if self.gone[u.id]]), label="user")
        task_id = data.draw(st.sampled_from(self.gone[user.id]), label="task id")
        assert self.attempt(user, user, task_id, method).status_code == 404

    @rule(
        data=st.data(),
        status=st.sampled_from(["all", "pending", "completed", None]),
        sort=st.sampled_from(["created", "updated", "title", None]),
        order=st.sampled_from(["asc", "desc", None]),
        search=st.none() | SEARCHES,
        limit=st.integers(1, 4),
    )
    def list_and_page(
        self,
        data: st.DataObject,
        status: str | None,
        sort: str | None,
        order: str | None,
        search: str | None,
        limit: int,
    ) -> None:
        user = data.draw(st.sampled_from(self.users), label="user")
        own = list(self.tasks[user.id].values())
        if search is None and own and data.draw(st.booleans(), label="search a title"):
            title = data.draw(st.sampled_from(sorted(t.title for t in own)), label="from title")
            start = data.draw(st.integers(0, len(title) - 1), label="start")
            candidate = title[start : start + 3]
            search = candidate if candidate.isascii() and candidate.strip() else None
        params = {
            key: value
            for key, value in {"status": status, "sort": sort, "order": order, "q": search}.items()
            if value is not None
        }
        unpaged = self.list_all(user, **params)

        completed = {"pending": False, "completed": True}.get(status or "all")
        expected = {task.id for task in own if task.matches(completed, search)}
        assert {task["id"] for task in unpaged} == expected, params
        assert all(task["user_id"] == user.id for task in unpaged)
        sort_key = sort or "created"
        ascending = (order or ("asc" if sort_key == "title" else "desc")) == "asc"
        if sort_key != "title":
            # Sequential requests: creation order is id order, update order is the model's clock.
            by_model = sorted(
                (self.tasks[user.id][task_id] for task_id in expected),
                key=lambda t: t.id if sort_key == "created" else (t.updated_seq, t.id),
                reverse=not ascending,
            )
            assert [task["id"] for task in unpaged] == [task.id for task in by_model], params

        # Paging, Link by Link, gives exactly the unpaged list, in order, each page within the limit.
        response = self.request(user, "GET", user.tasks_url, params={**params, "limit": limit})
        paged: list[dict[str, Any]] = []
        while True:
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page) <= limit
            paged += page
            match = _NEXT.search(response.headers.get("link", ""))
            if match is None:
                break
            assert len(page) == limit
            assert len(paged) < len(unpaged), "a next link after the last task"
            response = self.request(user, "GET", match.group(1))
        assert [task["id"] for task in paged] == [task["id"] for task in unpaged], params

    def attempt(self, actor: ApiUser, path_owner: ApiUser, task_id: int, method: str) -> httpx.Response:
        url = path_owner.task_url(task_id)
        if method == "PATCH":
            return self.request(actor, "PATCH", f"{url}/complete")
        if method == "PUT":
            return self.request(actor, "PUT", url, json={"title": "hijacked", "completed": True})
        return self.request(actor, method, url)

    @rule(
        data=st.data(),
        method=st.sampled_from(["LIST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
    )
    def someone_elses_path(self, data: st.DataObject, method: str) -> None:
        actor = data.draw(st.sampled_from(self.users), label="actor")
        victim = data.draw(st.sampled_from([u for u in self.users if u != actor]), label="victim")
        self.figures.cross_user_attempts += 1
        if method == "LIST":
            response = self.request(actor, "GET", victim.tasks_url)
        elif method == "POST":
            response = self.request(actor, "POST", victim.tasks_url, json={"title": "planted"})
        else:
            victims_tasks = sorted(self.tasks[victim.id]) or [1]
            task_id = data.draw(st.sampled_from(victims_tasks), label="task id")
            response = self.attempt(actor, victim, task_id, method)
        assert response.status_code == 403, response.text

    @precondition(has_tasks)
    @rule(data=st.data(), method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
    def someone_elses_task_on_my_path(self, data: st.DataObject, method: str) -> None:
        victim, task = self.draw_owned(data)
        actor = data.draw(st.sampled_from([u for u in self.users if u != victim]), label="actor")
        self.figures.cross_user_attempts += 1
        response = self.attempt(actor, actor, task.id, method)
        assert_problem(response, 404, "not-found")

    # -- the invariant -----------------------------------------------------------------------

    @invariant()
    def everyone_sees_exactly_their_own(self) -> None:
        self.figures.steps += 1
        for user in self.users:
            listed = self.list_all(user)
            assert all(task["user_id"] == user.id for task in listed)
            seen = {task["id"]: _visible(task) for task in listed}
            expected = {
                task.id: (task.title, task.description, task.completed, task.created_at, task.updated_at)
                for task in self.tasks[user.id].values()
            }
            assert seen == expected
            assert [task["id"] for task in listed] == sorted(seen, reverse=True), "newest first by default"


def test_users_see_exactly_their_own_tasks(api_url: str) -> None:
    figures = Figures()
    with httpx.Client(base_url=api_url, timeout=30) as client:

        class Machine(TaskMachine):
            pass

        Machine.client = client
        Machine.figures = figures
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=30,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    server_errors = sum(n for status, n in figures.statuses.items() if status >= 500)
    print(
        f"\nstate machine: {figures.examples} examples, {figures.steps} steps, {figures.requests} requests, "
        f"{figures.cross_user_attempts} cross-user attempts, "
        f"statuses {dict(sorted(figures.statuses.items()))}, 5xx: {server_errors}"
    )
