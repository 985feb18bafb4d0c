"""Request-only endpoints skip FastAPI's request handler (`AuthenticatedRoute`, api/http/caller.py).

That handler solves dependencies, parses query strings and cookies and builds a spare response on
every request; skipping it is one of the larger savings per request (bench/RESULTS.md, "Fourth
session"). It rests on FastAPI internals, so a FastAPI release that changes them must fail here,
not quietly cost throughput.
"""

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import fastapi.routing
import httpx
import pytest
from fastapi import Request, Response

from api.http.caller import AuthenticatedRoute
from api.tasks.routes import router
from tests.support import ApiUser

REQUEST_ONLY = {"list_tasks", "read_task", "delete_task"}


def _takes_only_the_request(endpoint: Callable[..., Any]) -> bool:
    """Judged from the signature alone, without asking FastAPI."""
    hints = get_type_hints(endpoint)
    parameters = list(inspect.signature(endpoint).parameters)
    return (
        inspect.iscoroutinefunction(endpoint)
        and len(parameters) == 1
        and hints.get(parameters[0]) is Request
        and issubclass(hints["return"], Response)
    )


def test_the_request_only_endpoints_are_known() -> None:
    routes = [route for route in router.routes if isinstance(route, AuthenticatedRoute)]
    assert {route.endpoint.__name__ for route in routes if _takes_only_the_request(route.endpoint)} == (
        REQUEST_ONLY
    )


def test_request_only_endpoints_never_reach_fastapis_request_handler(
    client: httpx.Client, alice: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    # Looked up by name at every call inside FastAPI's request handler, which is what makes it a probe.
    solve = fastapi.routing.solve_dependencies  # type: ignore[attr-defined]

    async def counting_solve(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting_solve)

    created = client.post(alice.tasks_url, json={"title": "through FastAPI"}, headers=alice.headers)
    assert created.status_code == 201
    assert solved == [alice.tasks_url], "a body still goes through FastAPI's handler, and is seen here"

    solved.clear()
    task_url = alice.task_url(created.json()["id"])
    assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200
    assert client.get(task_url, headers=alice.headers).status_code == 200
    assert client.delete(task_url, headers=alice.headers).status_code == 204
    assert solved == []
