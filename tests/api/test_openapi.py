"""The docs describe every endpoint, every error response and the Bearer scheme."""

import asyncio
import gzip
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import psycopg
import pytest
from openapi_spec_validator import validate
from psycopg import sql

from api.app import create_app, openapi_document
from api.auth.principal import USER_ID_MAX_LENGTH
from api.tasks.listing import CURSOR_MAX_LENGTH
from api.tasks.models import WHITE_SPACE
from tests.support import HEAD_REFUSALS, ApiUser, listed_types, new_user, serving_client, settings_for

TASK_OPERATIONS = [
    ("/api/{user_id}/tasks", "get"),
    ("/api/{user_id}/tasks", "post"),
    ("/api/{user_id}/tasks/{task_id}", "get"),
    ("/api/{user_id}/tasks/{task_id}", "put"),
    ("/api/{user_id}/tasks/{task_id}", "delete"),
    ("/api/{user_id}/tasks/{task_id}/complete", "patch"),
]


@pytest.fixture(scope="module")
def spec(api_url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{api_url}/openapi.json").json()
    return document


def test_bearer_scheme_is_declared(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["HTTPBearer"]["description"],
    }


@pytest.mark.parametrize(("path", "method"), TASK_OPERATIONS)
def test_every_task_operation_documents_security_and_errors(
    spec: dict[str, Any], path: str, method: str
) -> None:
    operation = spec["paths"][path][method]
    assert operation["security"] == [{"HTTPBearer": []}]
    expected_errors = {"401", "403", "422", "503"} | ({"404"} if "task_id" in path else set())
    assert expected_errors <= set(operation["responses"])
    for status in expected_errors:
        assert listed_types(operation["responses"][status])


def test_list_documents_its_query_parameters(spec: dict[str, Any]) -> None:
    parameters = spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]
    assert {(p["name"], p["in"], p["required"]) for p in parameters} == {
        *((name, "query", False) for name in ("status", "sort", "order", "q", "limit", "cursor")),
        *((name, "header", False) for name in ("If-Match", "If-None-Match", "X-Request-ID")),
        ("user_id", "path", True),
    }
    limit = next(p["schema"] for p in parameters if p["name"] == "limit")
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 500, 100)
    status = next(p["schema"] for p in parameters if p["name"] == "status")
    assert status["enum"] == ["all", "pending", "completed"]
    cursor = next(p["schema"] for p in parameters if p["name"] == "cursor")
    assert cursor["anyOf"][0] == {
        "type": "string",
        "maxLength": CURSOR_MAX_LENGTH,
        "pattern": "^[A-Za-z0-9_-]*$",
    }


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    """As the document says it is: the event stream's `itemSchema`, an OpenAPI 3.2 field, made it
    invalid 3.1, and orval and openapi-generator, two common generators, made no client from it."""
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises naming the first place that is not OpenAPI 3.1


def test_the_user_id_parameter_admits_what_authentication_takes_as_a_sub(spec: dict[str, Any]) -> None:
    (user_id,) = (
        p for p in spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"] if p["name"] == "user_id"
    )
    assert (user_id["schema"]["minLength"], user_id["schema"]["maxLength"]) == (1, USER_ID_MAX_LENGTH)


def test_health_endpoints_are_public(spec: dict[str, Any]) -> None:
    for path in ("/healthz", "/readyz"):
        assert "security" not in spec["paths"][path]["get"]


def test_the_served_document_is_the_one_todo_api_openapi_prints(spec: dict[str, Any]) -> None:
    """README.md: `todo-api openapi` prints the document this version serves, which the TypeScript
    client is generated from; /openapi.json is served by api/http/docs.py, not FastAPI's own route."""
    assert spec == openapi_document()


def test_docs_page_is_served(api_url: str) -> None:
    response = httpx.get(f"{api_url}/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text


# Each request header an operation reads (api/tasks/routes.py), as a header parameter.
READ_HEADERS = {
    ("/api/{user_id}/tasks", "get"): {"If-Match", "If-None-Match"},
    ("/api/{user_id}/tasks", "post"): {"Idempotency-Key", "If-Match", "If-None-Match"},
    ("/api/{user_id}/tasks/{task_id}", "get"): {"If-None-Match", "If-Match"},
    ("/api/{user_id}/tasks/{task_id}", "put"): {"If-Match", "If-None-Match"},
    ("/api/{user_id}/tasks/{task_id}", "delete"): {"If-Match", "If-None-Match"},
    ("/api/{user_id}/tasks/{task_id}/complete", "patch"): {"If-Match", "If-None-Match"},
}


@pytest.mark.parametrize(("path", "method"), TASK_OPERATIONS)
def test_every_header_an_operation_reads_is_a_parameter_and_its_412_and_body_limits_documented(
    spec: dict[str, Any], path: str, method: str
) -> None:
    operation = spec["paths"][path][method]
    headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
    assert headers == {*READ_HEADERS[(path, method)], "X-Request-ID"}
    responses = set(operation["responses"])
    assert ("412" in responses) == ("If-Match" in headers)
    assert {"408", "413"} <= responses or "requestBody" not in operation


def test_every_operation_documents_the_request_id_a_client_may_send(spec: dict[str, Any]) -> None:
    """Read by every request (api/telemetry/logs.py), and never refused: undocumented, a generated
    client offered no way to send it."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            (request_id,) = [p for p in operation["parameters"] if p["name"] == "X-Request-ID"]
            assert (request_id["in"], request_id["required"]) == ("header", False), (path, method)


def test_the_event_stream_documents_the_refusals_it_can_get_and_no_others(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/api/{user_id}/events"]["get"]["responses"]
    unavailable = responses["503"]["description"]
    # Its own (api/events/hub.py), besides every authenticated operation's; outcome-unknown is a write's.
    for problem in ("database-unavailable", "authentication-unavailable", "isolation-unverified"):
        assert problem in unavailable
    assert "streams-unavailable" in unavailable
    assert "outcome-unknown" not in unavailable
    too_many = responses["429"]
    assert "MAX_STREAMS_PER_USER" in too_many["description"]
    # The stream cap's 429 sends Retry-After alone; the rate-limit fields are documented, as the
    # rate limiter's only.
    assert set(too_many["headers"]) == {
        "Retry-After",
        "RateLimit-Policy",
        "RateLimit",
        "X-Request-ID",
        "Cache-Control",
    }
    for name in ("RateLimit-Policy", "RateLimit"):
        assert too_many["headers"][name]["description"].startswith("Past RATE_LIMIT_PER_MINUTE only:")


@pytest.mark.parametrize(("path", "method"), TASK_OPERATIONS)
def test_only_a_writes_503_lists_outcome_unknown(spec: dict[str, Any], path: str, method: str) -> None:
    """A read's broken connection is retried or database-unavailable (api/db/database.py): listed on a
    read, outcome-unknown was a case a client would code for and never meet."""
    listed = listed_types(spec["paths"][path][method]["responses"]["503"])
    assert ("urn:todo-api:problem:outcome-unknown" in listed) == (method != "get")


def _documented_string_is_valid(schema: dict[str, Any], value: str) -> bool:
    """What a client holding the document may send: JSON Schema counts code points, as len() does,
    and `pattern` matches anywhere, as re.search does."""
    within = schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    return within and re.search(schema.get("pattern", ""), value) is not None


def _sent_as(form: str, client: httpx.Client, user: ApiUser, body: dict[str, Any]) -> httpx.Response:
    """`body` sent in `form`, after a task titled "before" was made: as a create (TaskCreate) or as a
    PUT to that task (TaskUpdate)."""
    created = client.post(user.tasks_url, json={"title": "before"}, headers=user.headers)
    assert created.status_code == 201, created.text
    if form == "TaskCreate":
        return client.post(user.tasks_url, json=body, headers=user.headers)
    return client.put(user.task_url(created.json()["id"]), json=body, headers=user.headers)


def _stored(api_db: psycopg.Connection[Any], user: ApiUser, column: str) -> list[Any]:
    """`column` of each of `user`'s tasks, oldest first."""
    query = sql.SQL("select {} from tasks where user_id = %s order by id").format(sql.Identifier(column))
    return [value for (value,) in api_db.execute(query, [user.id])]


# Each side of every rule: white space as Unicode defines it (trimmed) and characters some regex engine
# calls white space that Unicode does not (kept); lengths as sent around the limit; NUL, which Postgres
# cannot store, anywhere in the title and beside white space.
TITLES = [" ", "\u3000", "\u0085", " \t\n ", "x" * 200 + " " * 5000, " " + "x" * 200, " " + "x" * 199]
TITLES += ["x", "\ufeff", "\x1c", "\u200b", "x" * 200, "x" * 201, "\u3000x\u0085"]
TITLES += ["a\x00b", "\x00", "\x00x", "x\x00", " \x00 ", "x\n\x00", "x" * 199 + "\x00"]


@pytest.mark.parametrize("title", TITLES, ids=lambda title: ascii(title[:8]) + f"-{len(title)}")
@pytest.mark.parametrize("form", ["TaskCreate", "TaskUpdate"])
def test_a_title_is_refused_exactly_when_the_document_says_it_is_invalid_and_stored_trimmed(
    spec: dict[str, Any], client: httpx.Client, api_db: psycopg.Connection[Any], form: str, title: str
) -> None:
    alice = new_user()
    schema = spec["components"]["schemas"][form]["properties"]["title"]
    response = _sent_as(form, client, alice, {"title": title})
    stored = _stored(api_db, alice, "title")
    if _documented_string_is_valid(schema, title):
        assert response.status_code == (201 if form == "TaskCreate" else 200), response.text
        assert response.json()["title"] == title.strip(WHITE_SPACE)
        assert stored[-1] == title.strip(WHITE_SPACE)
    else:
        assert response.status_code == 422, response.text
        assert [error["field"] for error in response.json()["errors"]] == ["body.title"]
        assert stored == ["before"]


DESCRIPTIONS = [
    "",
    "x",
    " ",
    "a\x00b",
    "\x00",
    "x\n\x00",
    "\x00\n",
    "x" * 1000,
    "x" * 999 + "\x00",
    "x" * 1001,
]


@pytest.mark.parametrize("description", DESCRIPTIONS, ids=lambda text: ascii(text[:8]) + f"-{len(text)}")
@pytest.mark.parametrize("form", ["TaskCreate", "TaskUpdate"])
def test_a_description_is_refused_exactly_when_the_document_says_it_is_invalid(
    spec: dict[str, Any], client: httpx.Client, api_db: psycopg.Connection[Any], form: str, description: str
) -> None:
    alice = new_user()
    (schema,) = [
        option
        for option in spec["components"]["schemas"][form]["properties"]["description"]["anyOf"]
        if option["type"] == "string"
    ]
    response = _sent_as(form, client, alice, {"title": "t", "description": description})
    stored = _stored(api_db, alice, "description")
    if _documented_string_is_valid(schema, description):
        assert response.status_code == (201 if form == "TaskCreate" else 200), response.text
        assert stored[-1] == description
    else:
        assert response.status_code == 422, response.text
        assert [error["field"] for error in response.json()["errors"]] == ["body.description"]
        assert stored == [None]


@pytest.mark.parametrize("form", ["TaskCreate", "TaskUpdate"])
def test_the_body_the_docs_page_offers_is_each_fields_example_and_is_stored_as_shown(
    spec: dict[str, Any], client: httpx.Client, api_db: psycopg.Connection[Any], form: str
) -> None:
    """Swagger UI's "Try it out" fills a body with each property's first example; a text field with
    none got a string made up from its pattern, random characters a newcomer then stored as a task."""
    schema = spec["components"]["schemas"][form]
    texts = [name for name, field in schema["properties"].items() if "pattern" in json.dumps(field)]
    assert texts == ["title", "description"]
    offered = {name: schema["properties"][name].get("examples", [None])[0] for name in texts}
    assert all(isinstance(example, str) for example in offered.values()), offered
    jsonschema_rs.validator_for({"components": spec["components"], **schema}).validate(offered)
    alice = new_user()
    response = _sent_as(form, client, alice, offered)
    assert response.status_code == (201 if form == "TaskCreate" else 200), response.text
    assert {name: response.json()[name] for name in texts} == offered
    assert _stored(api_db, alice, "title")[-1] == offered["title"]


@pytest.mark.parametrize("q", ["x", "a\x00b", "\x00", "x" * 200, "x" * 199 + "\x00", "x" * 201])
def test_a_search_is_refused_exactly_when_the_document_says_it_is_invalid(
    spec: dict[str, Any], client: httpx.Client, q: str
) -> None:
    alice = new_user()
    parameters = spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]
    (schema,) = [
        option
        for parameter in parameters
        if parameter["name"] == "q"
        for option in parameter["schema"]["anyOf"]
        if option["type"] == "string"
    ]
    response = client.get(alice.tasks_url, params={"q": q}, headers=alice.headers)
    if _documented_string_is_valid(schema, q):
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 422, response.text
        assert [error["field"] for error in response.json()["errors"]] == ["query.q"]


# Sent with any answer, and not documented per response: OpenAPI ignores Content-Type there (the
# response's `content` says it), and the others frame the message.
_FRAMING_HEADERS = {"content-type", "content-length", "date", "server", "transfer-encoding"}
# About the connection, not the answer (RFC 9110, section 7.6.1): a proxy removes them, and HTTP/2 and
# HTTP/3 have none (RFC 9113, section 8.2.2), so a client may never see them. The document leaves them
# to HTTP, as it does framing; any answer to a chunked body it did not read says `Connection: close`.
_HOP_BY_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_OPERATIONS = [
    (path, method) for path, path_item in openapi_document()["paths"].items() for method in path_item
]
OPERATIONS = [pytest.param(path, method, id=f"{method.upper()} {path}") for path, method in _OPERATIONS]


def _target(path: str) -> str:
    return path.replace("{user_id}", "alice").replace("{task_id}", "1")


def _assert_documented(spec: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    """The answer is one the operation documents, every header it carries is documented on it, and
    every header documented as required is there."""
    responses = spec["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, f"{method.upper()} {path}: {response.text}"
    documented = {
        name.lower(): header for name, header in responses[str(response.status_code)]["headers"].items()
    }
    sent = set(response.headers.keys())
    undocumented = sent - _FRAMING_HEADERS - _HOP_BY_HOP_HEADERS
    assert undocumented <= set(documented), f"{method.upper()} {path} {response.status_code}"
    assert {name for name, header in documented.items() if header.get("required")} <= sent
    if response.headers.get("content-type") == "application/problem+json":
        documented_response = responses[str(response.status_code)]
        assert response.json()["type"] in listed_types(documented_response)
        schema = documented_response["content"]["application/problem+json"]["schema"]
        jsonschema_rs.validator_for({"components": spec["components"], **schema}).validate(response.json())


def test_every_problem_documents_the_status_it_is_answered_with(spec: dict[str, Any]) -> None:
    """The Problem schema's `status` was a bare integer, so the docs page (Swagger UI) showed every
    error's example as `"status": 0`, and a generated client typed a 404's status as any number. Real
    answers are held to it by `_assert_documented`."""
    for path, path_item in spec["paths"].items():
        for method, operation in path_item.items():
            for status, response in operation["responses"].items():
                if "application/problem+json" in response.get("content", {}):
                    schema = response["content"]["application/problem+json"]["schema"]
                    documented = schema["allOf"][1]["properties"].get("status")
                    assert documented == {"type": "integer", "enum": [int(status)]}, (method, path, status)
                    assert "status" in schema["allOf"][1]["required"], (method, path, status)


@pytest.mark.parametrize(("path", "method"), [*TASK_OPERATIONS, ("/api/{user_id}/events", "get")])
def test_a_503_names_every_cause_the_readme_gives_it(spec: dict[str, Any], path: str, method: str) -> None:
    """It named an unreachable database, a statement timeout and an isolation finding only: a client
    reading the document alone took a busy pool, a standby or a database out of disk for a bug."""
    description = spec["paths"][path][method]["responses"]["503"]["description"]
    causes = [
        "cannot be reached",
        "DB_POOL_TIMEOUT_SECONDS",
        "DB_STATEMENT_TIMEOUT_MS",
        "lock_timeout",
        "ran out of a resource",
        "an error of its own",
        "conflict with other transactions",
        "Better Auth's keys",
        "isolation check",
    ]
    causes += ["read-only"] if method != "get" else []
    causes += ["MAX_STREAMS_PER_WORKER", "shutting down"] if path.endswith("/events") else []
    assert [cause for cause in causes if cause not in description] == []


def test_readiness_refused_names_every_cause_of_its_503(spec: dict[str, Any]) -> None:
    """It said only that the database did not answer, while a standby that answers is not ready either
    (README.md, "Deploying", step 4)."""
    description = spec["paths"]["/readyz"]["get"]["responses"]["503"]["description"]
    causes = ["did not answer", "read-only", "pool holds no connection", "isolation check"]
    assert [cause for cause in causes if cause not in description] == []


def test_x_request_id_is_documented_as_always_sent_but_on_the_servers_own_answers(
    spec: dict[str, Any],
) -> None:
    """Every answer of the API carries it (asgi-correlation-id, outermost); the 431 and some 400s are
    the server's own, sent before the API runs, without it. The answers that carry it are held to the
    `required` mark by `_assert_documented`."""
    for path, path_item in spec["paths"].items():
        for method, operation in path_item.items():
            for status, response in operation["responses"].items():
                header = response.get("headers", {}).get("X-Request-ID", {})
                assert header.get("required", False) == (status not in ("400", "431")), (method, path, status)


def test_the_document_promises_no_header_about_the_connection(spec: dict[str, Any]) -> None:
    """It documented `Connection: close` on the body limits' 400, 408, 413 and 501 alone, while every
    answer to a chunked body left unread (a 401, a 404, ...) carries it too; and a client behind an
    HTTP/2 proxy sees it on none of them."""
    documented = {
        name.lower()
        for path_item in spec["paths"].values()
        for operation in path_item.values()
        for response in operation["responses"].values()
        for name in response.get("headers", {})
    }
    assert not documented & _HOP_BY_HOP_HEADERS


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_operation_documents_what_the_body_limits_answer_before_its_route(
    spec: dict[str, Any], api_db_url: str, path: str, method: str
) -> None:
    """Answered before the route is chosen, so before a 401, and under a server that passes such a
    head on (uvicorn refuses some itself): called as an ASGI server calls the app."""
    app = create_app(settings_for(api_db_url))

    async def send(headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, _target(path), headers=headers)

    for headers, status in HEAD_REFUSALS.values():
        response = asyncio.run(send(headers))
        assert response.status_code == status, (headers, response.text)
        assert response.headers["connection"] == "close"
        _assert_documented(spec, path, method, response)


AUTHENTICATED = [
    param for param, (path, _) in zip(OPERATIONS, _OPERATIONS, strict=True) if path.startswith("/api/")
]
# The methods whose bodies are admitted only as JSON (api/http/caller.py).
WITH_BODIES = [
    param
    for param, (_, method) in zip(OPERATIONS, _OPERATIONS, strict=True)
    if method in ("post", "put", "patch")
]


@pytest.mark.parametrize(("path", "method"), AUTHENTICATED)
def test_every_401_is_documented_with_its_challenge(
    spec: dict[str, Any], client: httpx.Client, path: str, method: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = client.request(method, _target(path), headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        _assert_documented(spec, path, method, response)


@pytest.mark.parametrize(("path", "method"), WITH_BODIES)
def test_a_compressed_body_is_a_documented_415_naming_what_is_accepted(
    spec: dict[str, Any], client: httpx.Client, path: str, method: str
) -> None:
    alice = new_user()
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    target = path.replace("{user_id}", alice.id).replace("{task_id}", "1")
    response = client.request(method, target, content=gzip.compress(b'{"title": "x"}'), headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["accept-encoding"] == "identity"
    _assert_documented(spec, path, method, response)


def test_readiness_refused_is_a_documented_503_with_retry_after(
    spec: dict[str, Any], api_db_url: str
) -> None:
    """An app not yet started has checked nothing: /readyz refuses, as it does after a finding."""
    app = create_app(settings_for(api_db_url))

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get("/readyz")

    response = asyncio.run(send())
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 0
    _assert_documented(spec, "/readyz", "get", response)


def test_the_event_stream_is_documented_with_the_headers_it_opens_with(
    spec: dict[str, Any], api_url: str
) -> None:
    alice = new_user()
    with httpx.stream("GET", f"{api_url}/api/{alice.id}/events", headers=alice.headers) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        _assert_documented(spec, "/api/{user_id}/events", "get", response)


def test_a_405_names_in_allow_exactly_the_methods_the_document_lists_for_its_path(
    spec: dict[str, Any], client: httpx.Client
) -> None:
    """405 is documented on no operation, and that is exact: it answers a method the path does not
    take, which has no operation to document it on (RFC 9110, section 15.5.6), and the document's
    path item already says what `Allow` does. Here they are held to agree: HEAD is served wherever GET
    is (api/http/methods.py), and is not a second operation."""
    for path, path_item in spec["paths"].items():
        documented = {method.upper() for method in path_item}
        documented |= {"HEAD"} if "GET" in documented else set()
        refused = sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented)
        assert refused, path
        for method in refused:
            response = client.request(method, _target(path))
            assert response.status_code == 405, (method, path, response.text)
            assert set(response.headers["allow"].split(", ")) == documented
        assert all("405" not in operation["responses"] for operation in path_item.values())


# Every (operation, status) the document lists, and for a problem every type it lists there, read from
# the document itself: one added later is held here too, and one no recipe below can bring about fails
# until one is added. Not the 431, the server's own answer (tests/test_server_limits.py), which the API
# never gives.
NEVER_ANSWERED_BY_THE_API = {"431"}
# Documented, and never answered: FastAPI documents a 422 wherever a path has a parameter, and the
# stream's one parameter, `{user_id}`, is any text; it validates nothing else (Last-Event-ID it reads
# whole or not at all).
NOTHING_TO_VALIDATE = {("/api/{user_id}/events", "get", "422")}
# Not brought about here, but where their cause is staged: a database that stops answering
# (tests/faults), a statement past DB_STATEMENT_TIMEOUT_MS (tests/test_transactions.py, a write behind
# a row lock; tests/api/test_fair_use.py, a costly search), keys that cannot be fetched (tests/auth), a
# worker's streams all taken (tests/api/test_events.py), two creates with one key at once
# (tests/api/test_idempotency.py).
PROVEN_ELSEWHERE = {
    "database-unavailable",
    "statement-timeout",
    "outcome-unknown",
    "authentication-unavailable",
    "streams-unavailable",
    "idempotency-key-in-use",
}


def _listed_slugs(response: dict[str, Any]) -> list[str | None]:
    if "application/problem+json" not in response.get("content", {}):
        return [None]
    return [urn.removeprefix("urn:todo-api:problem:") for urn in listed_types(response)]


DOCUMENTED_ANSWERS = [
    pytest.param(path, method, status, slug, id=f"{method.upper()} {path} {status} {slug or ''}".strip())
    for path, path_item in openapi_document()["paths"].items()
    for method, operation in path_item.items()
    for status, response in operation["responses"].items()
    if status not in NEVER_ANSWERED_BY_THE_API and (path, method, status) not in NOTHING_TO_VALIDATE
    for slug in _listed_slugs(response)
    if slug not in PROVEN_ELSEWHERE
]


def _sent(client: httpx.Client, method: str, url: str, **options: Any) -> httpx.Response:
    """The answer, read whole unless it is an event stream, which is closed once its head is in."""
    with client.stream(method, url, **options) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
    return response


def _new_target(path: str, task_id: int | str = 1) -> tuple[ApiUser, str]:
    """A new user, and `path` naming them and `task_id`."""
    user = new_user()
    return user, path.replace("{user_id}", user.id).replace("{task_id}", str(task_id))


def _about_a_new_task(
    client: httpx.Client, path: str, method: str, headers: dict[str, str] | None = None, **options: Any
) -> httpx.Response:
    """`method` on `path` for a new user who has one task, which `{task_id}` names, with `headers`; a
    create or an update sends a title, and a PATCH no body (a toggle), unless `options` say otherwise."""
    user = new_user()
    created = client.post(user.tasks_url, json={"title": "before"}, headers=user.headers)
    assert created.status_code == 201, created.text
    target = path.replace("{user_id}", user.id).replace("{task_id}", str(created.json()["id"]))
    body = {"post": {"title": "created"}, "put": {"title": "after"}}.get(method)
    options = options or {"json": body}
    return _sent(client, method, target, headers={**user.headers, **(headers or {})}, **options)


def _called_as_asgi(app: Any, method: str, target: str, headers: dict[str, str]) -> httpx.Response:
    """The app's answer called as an ASGI server calls it, unstarted: what it answers before a route
    runs, under a server that passes any head on."""

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, target, headers=headers)

    return asyncio.run(send())


def _refused_by_settings(
    request: pytest.FixtureRequest, method: str, target: str, user: ApiUser, **settings: Any
) -> httpx.Response:
    """The second of two requests to an API run with `settings`: the first may be let through."""
    app = create_app(settings_for(request.getfixturevalue("api_db_url"), **settings))
    body = {"title": "x"} if method in ("post", "put") else None
    with serving_client(app) as limited:
        _sent(limited, method, target, headers=user.headers, json=body)
        return _sent(limited, method, target, headers=user.headers, json=body)


def _slow_body(seconds: float) -> Iterator[bytes]:
    """A body whose first bytes come at once, and the rest never within `seconds`."""
    yield b'{"title": '
    time.sleep(seconds)


def _answer_of(
    status: str, slug: str | None, path: str, method: str, request: pytest.FixtureRequest
) -> httpx.Response:
    """A real answer of `status`, and of the problem type `slug` if any, from `method` on `path`,
    provoked as a client would."""
    client: httpx.Client = request.getfixturevalue("client")
    if slug is None:
        headers = {"If-None-Match": "*"} if status == "304" else {}
        return _about_a_new_task(client, path, method, headers)
    if slug == "precondition-failed":
        return _about_a_new_task(client, path, method, {"If-Match": '"0.0"'})
    if slug == "unauthorized":
        return _sent(client, method, _target(path))
    if slug == "forbidden":
        user, _ = _new_target(path)
        return _sent(client, method, _target(path), headers=user.headers)
    if slug == "not-found":
        user, target = _new_target(path, task_id=2**31 - 1)
        body = {"title": "x"} if method == "put" else None
        return _sent(client, method, target, headers=user.headers, json=body)
    if slug == "unsupported-media-type":
        return _about_a_new_task(client, path, method, {"Content-Type": "text/plain"}, content=b"x")
    if slug == "validation-error":
        return _about_a_new_task(client, path, method, {"If-Match": "not an entity-tag"})
    if slug in ("bad-request", "payload-too-large", "not-implemented"):
        headers = next(headers for headers, refused in HEAD_REFUSALS.values() if str(refused) == status)
        app = create_app(settings_for(request.getfixturevalue("api_db_url")))
        return _called_as_asgi(app, method, _target(path), headers)
    if slug == "request-timeout":
        user, target = _new_target(path)
        app = create_app(settings_for(request.getfixturevalue("api_db_url"), body_timeout_seconds=0.2))
        with serving_client(app) as slow:
            headers = {**user.headers, "Content-Type": "application/json"}
            # The rest of the body 3 s on, 15 times the deadline: under load (CI's second pass beside
            # the first, three probes beside both) the worker read a body that came after 1 s whole,
            # and answered its invalid JSON (422) rather than the wait.
            return _sent(slow, method, target, headers=headers, content=_slow_body(3))
    if slug == "task-limit-reached":
        user, target = _new_target(path)
        return _refused_by_settings(request, method, target, user, max_tasks_per_user=1)
    if slug in ("task-deleted", "idempotency-key-reused"):
        user, target = _new_target(path)
        key = {**user.headers, "Idempotency-Key": "once"}
        created = client.post(target, json={"title": "x"}, headers=key)
        if slug == "task-deleted":
            assert client.delete(created.headers["location"], headers=user.headers).status_code == 204
        return _sent(client, method, target, json={"title": "another"}, headers=key)
    if slug == "precondition-required":
        user = new_user()
        created = client.post(user.tasks_url, json={"title": "before"}, headers=user.headers)
        target = path.replace("{user_id}", user.id).replace("{task_id}", str(created.json()["id"]))
        return _refused_by_settings(request, method, target, user, require_if_match=True)
    if slug == "too-many-requests":
        # The same user's second request to an API that allows each user one a minute.
        user, target = _new_target(path)
        return _refused_by_settings(request, method, target, user, rate_limit_per_minute=1)
    if slug == "isolation-unverified":
        # An app whose isolation check has not run yet refuses, as it does after a finding.
        user, target = _new_target(path)
        app = create_app(settings_for(request.getfixturevalue("api_db_url")))
        return _called_as_asgi(app, method, target, user.headers)
    pytest.fail(f"the document lists {slug} on {method.upper()} {path} {status}: add a way to bring it about")


@pytest.mark.parametrize(("path", "method", "status", "slug"), DOCUMENTED_ANSWERS)
def test_every_documented_answer_and_problem_type_comes_for_real_with_its_required_headers(
    spec: dict[str, Any],
    request: pytest.FixtureRequest,
    path: str,
    method: str,
    status: str,
    slug: str | None,
) -> None:
    """What a typed client or a fuzzer relies on: schema.ts types a required header as always there,
    and a problem's `type` as one of those its operation and status list; each listed is one a real
    answer carries (or its test is named in PROVEN_ELSEWHERE)."""
    response = _answer_of(status, slug, path, method, request)
    assert str(response.status_code) == status, response.text
    if slug is not None:
        assert response.json()["type"] == f"urn:todo-api:problem:{slug}", response.text
    _assert_documented(spec, path, method, response)
    for name, header in spec["paths"][path][method]["responses"][status]["headers"].items():
        if header.get("required") and header["schema"]["type"] == "integer":
            assert response.headers[name].isdigit(), (name, response.headers[name])
