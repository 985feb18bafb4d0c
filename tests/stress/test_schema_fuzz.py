"""Schema-driven fuzzing: schemathesis makes valid and invalid requests from our own OpenAPI document.

Each case goes over real HTTP to a live uvicorn with a valid token for one of several users, whose
id it usually also names as `{user_id}` (and, for task paths, often one of that user's real task
ids), so generated bodies and queries reach the database instead of stopping at a 403 or 404; a
few cases carry a forged token instead and must be refused with 401. Whatever is sent, no response
may be a 5xx, and every response must be what the document promises: a documented status, media
type, headers and body; input the document calls invalid must be refused.
"""

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, checks
from schemathesis.core.parameters import ParameterLocation

from api.app import create_app
from api.auth.principal import USER_ID_MAX_LENGTH
from tests.support import HEAD_REFUSALS, ApiUser, assert_problem, new_user, now, settings_for, sign

USERS = 3
_FRAMING_HEADERS = {"transfer-encoding", "content-length"}
TASKS_PER_USER = 3
MAX_EXAMPLES = 30
# sampled_from leans towards its first element, so these stay rare.
ONE_IN_TEN = st.sampled_from([False] * 9 + [True])
ONE_IN_FIVE = st.sampled_from([False] * 4 + [True])

# Not `positive_data_acceptance`: the document cannot say everything the API refuses (a forged
# cursor, a failed If-Match), so it would flag correct 422s and 412s; the places where the
# document is simply wrong about what is valid are pinned down by the tests at the end instead.
# Not `ignored_auth`: every case gets its token from us, so "generated auth" is never invalid.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def _document() -> dict[str, Any]:
    # The lazy loader a live URL needs (schemathesis.pytest.from_fixture) breaks on pytest 9.2:
    # it reads request.node._nodeid, which pytest no longer has. So the cases come from the document
    # the app builds, and test_fuzzed_document_is_the_served_one proves uvicorn serves that same one.
    app = create_app(settings_for("postgresql://nobody@/nowhere?host=/nonexistent"))
    document: dict[str, Any] = app.openapi()
    return document


DOCUMENT = _document()
# The event stream is a stream, not an answer: each fuzzed call would hold it open until the
# client gives up, and its events are checked exactly in tests/api/test_events.py.
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path_regex=r"/events$")
# The document's examples (what the docs page offers to send) cannot be tried beside the strategies
# `given` adds here (schemathesis refuses the two together); tests/api/test_openapi.py sends them.
schema.config.phases.examples.enabled = False


@dataclass
class Fuzzing:
    """The users every case is sent as, each with a few real tasks to aim at; and what came back."""

    users: list[ApiUser]
    task_ids: dict[str, list[int]]
    statuses: Counter[int] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    forged_tokens: int = 0


@pytest.fixture(scope="module")
def fuzzing(api_url: str) -> Iterator[Fuzzing]:
    users = [new_user(email=f"fuzz{n}@example.com", name=f"Fuzz {n}") for n in range(USERS)]
    task_ids: dict[str, list[int]] = {}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        for user in users:
            task_ids[user.id] = []
            for n in range(TASKS_PER_USER):
                response = http.post(user.tasks_url, json={"title": f"seed {n}"}, headers=user.headers)
                assert response.status_code == 201, response.text
                task_ids[user.id].append(response.json()["id"])
    state = Fuzzing(users, task_ids)
    yield state
    total = sum(state.statuses.values())
    server_errors = sum(n for status, n in state.statuses.items() if status >= 500)
    print(
        f"\nschema fuzz: {total} requests ({dict(state.modes)}), {state.forged_tokens} with forged tokens, "
        f"statuses {dict(sorted(state.statuses.items()))}, 5xx: {server_errors}"
    )


def _forged_token(user: ApiUser) -> str:
    return sign(
        {"sub": user.id, "iat": now(), "exp": now() + 600},
        secret="not-the-api-secret-but-just-as-long-0123456789",
    )


def _generation_mode(case: Case[Any], location: ParameterLocation | None = None) -> str:
    if case.meta is None:
        return "unknown"
    if location is None:
        return str(case.meta.generation.mode.value)
    component = case.meta.components.get(location)
    return "positive" if component is None else str(component.mode.value)


def test_fuzzed_document_is_the_served_one(client: httpx.Client) -> None:
    assert client.get("/openapi.json").json() == DOCUMENT


@schema.parametrize()
@schema.given(data=st.data())
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_responses_are_what_the_document_promises(
    case: Case[Any], data: st.DataObject, fuzzing: Fuzzing, api_url: str
) -> None:
    user = data.draw(st.sampled_from(fuzzing.users), label="user")
    if case.path_parameters is not None and "user_id" in case.path_parameters:
        # A path made invalid on purpose (a user id of 256 characters, a task id 0 or past bigint)
        # must stay invalid.
        valid_path = _generation_mode(case, ParameterLocation.PATH) == "positive"
        valid_user_id = 1 <= len(str(case.path_parameters["user_id"])) <= USER_ID_MAX_LENGTH
        if (valid_path or valid_user_id) and not data.draw(ONE_IN_FIVE, label="someone else's path"):
            case.path_parameters["user_id"] = user.id
        if "task_id" in case.path_parameters and valid_path and data.draw(st.booleans(), label="real task"):
            case.path_parameters["task_id"] = data.draw(
                st.sampled_from(fuzzing.task_ids[user.id]), label="task id"
            )
    forged = case.operation.path.startswith("/api/") and data.draw(ONE_IN_TEN, label="forged token")
    token = _forged_token(user) if forged else user.token
    case.headers["Authorization"] = f"Bearer {token}"
    # Framing belongs to the HTTP server: a Transfer-Encoding or Content-Length the fuzzer makes up
    # (`transfer-encoding: =`) gets the server's own bare 400 before the API runs, as README says;
    # test_refusals_before_the_route_are_what_the_document_promises holds what reaches the API.
    for name in [name for name in case.headers if name.lower() in _FRAMING_HEADERS]:
        del case.headers[name]

    response = case.call_and_validate(base_url=api_url, checks=CHECKS)

    fuzzing.statuses[response.status_code] += 1
    fuzzing.modes[_generation_mode(case)] += 1
    if forged:
        fuzzing.forged_tokens += 1
        assert response.status_code == 401, f"a forged token got {response.status_code}: {response.text}"


def _admits_null(schema_or_ref: dict[str, Any]) -> bool:
    if "$ref" in schema_or_ref:
        return _admits_null(DOCUMENT["components"]["schemas"][schema_or_ref["$ref"].rsplit("/", 1)[1]])
    return any(option.get("type") == "null" for option in schema_or_ref.get("anyOf", [schema_or_ref]))


def _put_schema(field_name: str) -> dict[str, Any]:
    properties: dict[str, Any] = DOCUMENT["components"]["schemas"]["TaskUpdate"]["properties"]
    return dict(properties[field_name])


def _complete_body_schema() -> dict[str, Any]:
    operation = DOCUMENT["paths"]["/api/{user_id}/tasks/{task_id}/complete"]["patch"]
    return dict(operation["requestBody"]["content"]["application/json"]["schema"])


# The random cases above rarely hit these exactly: null where the document says null is fine. Either
# the document stops offering null, or the API takes it; a client generated from the document must not
# be refused for sending what the document allows.
@pytest.mark.parametrize(
    ("method", "suffix", "body", "documented"),
    [
        pytest.param(
            "PUT", "", b'{"title": null}', lambda: _admits_null(_put_schema("title")), id="PUT title"
        ),
        pytest.param(
            "PUT",
            "",
            b'{"completed": null}',
            lambda: _admits_null(_put_schema("completed")),
            id="PUT completed",
        ),
        pytest.param(
            "PATCH", "/complete", b"null", lambda: _admits_null(_complete_body_schema()), id="PATCH body"
        ),
    ],
)
def test_null_is_refused_only_where_the_document_refuses_it(
    client: httpx.Client, method: str, suffix: str, body: bytes, documented: Callable[[], bool]
) -> None:
    user = new_user()
    created = client.post(user.tasks_url, json={"title": "keep me"}, headers=user.headers)
    assert created.status_code == 201, created.text
    url = user.task_url(created.json()["id"]) + suffix
    headers = {**user.headers, "Content-Type": "application/json"}
    response = client.request(method, url, content=body, headers=headers)
    assert response.status_code < 500, response.text
    if documented():
        assert response.status_code == 200, (
            f"{method} {body!r}: the document allows it, the API answers {response.text}"
        )
    else:
        assert response.status_code == 422, response.text


# Found by the fuzzer: bodies that cannot be decoded at all. Every other malformed body is a 422
# naming `body`, which is what the document promises; these must be too, not an undocumented 400.
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff", id="not UTF-8"),
        pytest.param(b'{"title": "caf\xe9"}', id="Latin-1 inside JSON"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested deeper than the parser goes"),
    ],
)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", ""), ("PUT", "/1"), ("PATCH", "/1/complete")],
    ids=["POST", "PUT", "PATCH"],
)
def test_undecodable_bodies_are_documented_422s(
    client: httpx.Client, method: str, suffix: str, body: bytes
) -> None:
    user = new_user()
    headers = {**user.headers, "Content-Type": "application/json"}
    response = client.request(method, user.tasks_url + suffix, content=body, headers=headers)
    assert response.status_code == 422, f"{method} {user.tasks_url + suffix} {body[:20]!r}: {response.text}"
    problem = assert_problem(response, 422, "validation-error")
    assert [error["field"] for error in problem["errors"]] == ["body"]


# Found by a contract probe: answers given before any route is chosen (api/http/body_limit.py), to
# heads no generated case sends: a body declared too large, or framed in a way the API refuses, on
# any operation, the GETs included. Sent as an ASGI server passes them on (uvicorn refuses some
# itself), and held to the document by the same checks as the cases above.
@pytest.mark.parametrize(
    "operation",
    [
        schemathesis.openapi.from_dict(DOCUMENT)[path][method.upper()]
        for path, path_item in DOCUMENT["paths"].items()
        for method in path_item
    ],
    ids=lambda operation: operation.label,
)
@pytest.mark.parametrize(("headers", "status"), list(HEAD_REFUSALS.values()), ids=list(HEAD_REFUSALS))
def test_refusals_before_the_route_are_what_the_document_promises(
    api_db_url: str, operation: Any, headers: dict[str, str], status: int
) -> None:
    app = create_app(settings_for(api_db_url))
    case = operation.Case(
        path_parameters={
            name: 1 if name == "task_id" else "alice"
            for name in ("user_id", "task_id")
            if "{" + name + "}" in operation.path
        }
    )

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(case.method, case.formatted_path, headers=headers)

    response = asyncio.run(send())
    assert response.status_code == status, response.text
    # A 501 is RFC 9112's answer to a coding the server does not implement, documented as such: a
    # refusal, not a failure of the server, whatever its first digit.
    held_to = [check for check in CHECKS if status != 501 or check is not checks.not_a_server_error]
    case.validate_response(response, checks=held_to)
