"""What a browser frontend meets: CORS that lets it read the headers it needs, and a clear 415 for
a body that is not JSON (fetch sends a string body as text/plain)."""

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from api.app import CORS_REQUEST_HEADERS, CORS_RESPONSE_HEADERS, create_app, openapi_document
from tests.support import (
    TLS,
    ApiUser,
    assert_problem,
    break_task_updates,
    new_user,
    serving,
    serving_client,
    settings_for,
)

ORIGIN = "http://localhost:3000"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain;charset=UTF-8", b'{"title": "t"}'),
        ("application/x-www-form-urlencoded", b"title=t"),
        (None, b'{"title": "t"}'),
    ],
)
def test_a_body_that_is_not_json_is_415(
    client: httpx.Client, alice: ApiUser, content_type: str | None, body: bytes
) -> None:
    headers = {**alice.headers, **({"Content-Type": content_type} if content_type else {})}
    request = client.build_request("POST", alice.tasks_url, content=body, headers=headers)
    if content_type is None and "content-type" in request.headers:
        del request.headers["content-type"]
    response = client.send(request)
    assert response.status_code == 415
    assert response.json()["type"] == "urn:todo-api:problem:unsupported-media-type"
    assert "application/json" in response.json()["detail"]
    # The type a body may have, in the field a program reads (RFC 9110, section 15.5.16).
    assert response.headers["accept"] == "application/json"
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


@pytest.mark.parametrize("coding", ["gzip", "identity, br", "x-unknown"])
def test_a_compressed_body_is_415_and_creates_nothing(
    client: httpx.Client, alice: ApiUser, coding: str
) -> None:
    """Read as if uncompressed, a gzip body was a 422 about JSON, and a plain JSON body labelled gzip
    was stored: neither tells the client that no content coding is decoded here."""
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Encoding": coding}
    response = client.post(alice.tasks_url, content=b'{"title": "t"}', headers=headers)
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "identity"
    assert response.json()["type"] == "urn:todo-api:problem:unsupported-media-type"
    assert "Content-Encoding" in response.json()["detail"]
    assert client.get(alice.tasks_url, headers=alice.headers).json() == []


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        pytest.param(
            [
                ("Content-Type", "application/json"),
                ("Content-Encoding", "identity"),
                ("Content-Encoding", "gzip"),
            ],
            "Content-Encoding",
            id="a coding on a second line",
        ),
        pytest.param(
            [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
            "Content-Type",
            id="two types",
        ),
    ],
)
def test_a_body_described_over_several_field_lines_is_judged_by_all_of_them(
    client: httpx.Client, api_db: psycopg.Connection[Any], fields: list[tuple[str, str]], detail: str
) -> None:
    """Only the first line of each field was read, so these created a task: a Content-Encoding's
    lines are one list (RFC 9110, section 5.3), `identity, gzip`, which is a 415 sent on one line;
    and of two Content-Types a proxy or a WAF in front may act on the other one."""
    alice = new_user()
    headers = [*alice.headers.items(), *fields]
    response = client.post(alice.tasks_url, content=b'{"title": "t"}', headers=headers)
    problem = assert_problem(response, 415, "unsupported-media-type")
    assert detail in problem["detail"]
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/json; charset=latin1"]
)
def test_json_with_a_charset_and_a_toggle_without_a_body_are_fine(
    client: httpx.Client, alice: ApiUser, content_type: str
) -> None:
    """application/json has no charset (RFC 8259, section 11): whatever one says, the body is UTF-8."""
    created = client.post(
        alice.tasks_url,
        content='{"title": "thé"}'.encode(),
        headers={**alice.headers, "Content-Type": content_type, "Content-Encoding": "identity"},
    )
    assert created.status_code == 201
    assert created.json()["title"] == "thé"
    toggled = client.patch(f"{alice.task_url(created.json()['id'])}/complete", headers=alice.headers)
    assert toggled.status_code == 200


def test_a_toggle_with_a_zero_content_length_however_written_needs_no_type(
    client: httpx.Client, alice: ApiUser
) -> None:
    """`Content-Length: 00` is zero bytes too (RFC 9110, section 8.6: 1*DIGIT); it was a 415."""
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers)
    request = client.build_request("PATCH", f"{alice.task_url(created.json()['id'])}/complete")
    request.headers.update({**alice.headers, "Content-Length": "00"})
    toggled = client.send(request)
    assert toggled.status_code == 200, toggled.text
    assert client.get(alice.task_url(created.json()["id"]), headers=alice.headers).json()["completed"] is True


@pytest.fixture
def browser_api(api_db_url: str) -> Iterator[httpx.Client]:
    settings = settings_for(api_db_url, cors_origins=[ORIGIN])
    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, verify=TLS) as client:
        yield client


def _documented_headers() -> tuple[set[str], set[str]]:
    """The request headers the OpenAPI document says an operation reads (its header parameters, the
    Bearer token, a body's type), and every response header it documents; lower case."""
    document = openapi_document()
    operations = [op for path_item in document["paths"].values() for op in path_item.values()]
    sent = {p["name"].lower() for op in operations for p in op.get("parameters", []) if p["in"] == "header"}
    sent |= {"authorization"} if any("security" in op for op in operations) else set()
    sent |= {"content-type"} if any("requestBody" in op for op in operations) else set()
    read = {
        name.lower()
        for op in operations
        for response in op["responses"].values()
        for name in response.get("headers", {})
    }
    return sent, read


# Documented response headers a script has no need to be allowed to read: Cache-Control is a
# CORS-safelisted response header (the Fetch standard), which a browser exposes anyway;
# X-Accel-Buffering is for a proxy.
NOT_EXPOSED = {"cache-control", "x-accel-buffering"}


def test_the_cors_lists_name_every_header_the_document_does() -> None:
    sent, read = _documented_headers()
    assert sent <= {name.lower() for name in CORS_REQUEST_HEADERS}
    assert read - NOT_EXPOSED <= {name.lower() for name in CORS_RESPONSE_HEADERS}
    assert read >= NOT_EXPOSED, "an exemption for a header the document no longer lists"


def test_a_preflight_allows_the_request_headers_a_frontend_sends(
    browser_api: httpx.Client, alice: ApiUser
) -> None:
    sent, _ = _documented_headers()
    response = browser_api.options(
        alice.task_url(1),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": ", ".join(sorted(sent | {"x-request-id"})),
        },
    )
    assert response.status_code == 200
    # Starlette's own answer, as it always was: a browser reads only the headers.
    assert (response.headers["content-type"], response.content) == ("text/plain; charset=utf-8", b"OK")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = {name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")}
    assert sent | {"x-request-id"} <= allowed


def test_a_preflight_allows_every_method_a_resource_takes(browser_api: httpx.Client, alice: ApiUser) -> None:
    """HEAD was refused (400, "method"): every GET resource answers it, and a browser preflights a HEAD
    that carries a token, then fails it on any status but 2xx, although the method itself is one the
    Fetch standard lets pass. What each resource takes is what its 405 names in Allow."""
    task = browser_api.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers).json()
    for url in (alice.tasks_url, alice.task_url(task["id"]), f"{alice.task_url(task['id'])}/complete"):
        taken = browser_api.request("TRACE", url).headers["allow"].split(", ")
        for method in taken:
            response = browser_api.options(
                url,
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert response.status_code == 200, (url, method, response.text)
            assert response.headers["access-control-allow-origin"] == ORIGIN
    head = browser_api.head(alice.task_url(task["id"]), headers={**alice.headers, "Origin": ORIGIN})
    assert head.status_code == 200
    assert head.headers["access-control-allow-origin"] == ORIGIN
    assert head.headers["etag"] == f'"{task["id"]}.{task["version"]}"'


@pytest.mark.parametrize(
    ("asked", "refused"),
    [
        ({"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}, "origin"),
        ({"Origin": ORIGIN, "Access-Control-Request-Method": "TRACE"}, "method"),
        (
            {
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, x-unknown",
            },
            "headers",
        ),
    ],
)
def test_a_refused_preflight_is_a_problem_naming_what_was_refused(
    browser_api: httpx.Client, alice: ApiUser, asked: dict[str, str], refused: str
) -> None:
    """It was Starlette's plain text ("Disallowed CORS origin"), where every other refusal is a
    problem: a browser reads no body either way, but an operator trying the preflight with curl does."""
    response = browser_api.options(alice.tasks_url, headers=asked)
    body = assert_problem(response, 400, "cors-preflight-refused")
    # Exactly what Starlette named: its refusal's text is read (docs/extending.md, "Upgrading FastAPI
    # or Starlette"), and a release that words it otherwise would leave its prefix in the detail.
    assert f"(refused: {refused})" in body["detail"], body
    assert "CORS_ORIGINS" in body["detail"], body
    assert response.headers["vary"].startswith("Origin"), "still Starlette's CORS headers"
    assert "x-request-id" in response.headers


def test_a_browser_may_read_the_response_headers_it_needs(browser_api: httpx.Client, alice: ApiUser) -> None:
    _, read = _documented_headers()
    response = browser_api.get(alice.tasks_url, headers={**alice.headers, "Origin": ORIGIN})
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {name.lower() for name in CORS_RESPONSE_HEADERS} == exposed
    assert read - NOT_EXPOSED <= exposed


@pytest.mark.parametrize(
    ("sent", "field", "accepted"),
    [
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, "accept-encoding", "identity"),
        ({"Content-Type": "text/plain;charset=UTF-8"}, "accept", "application/json"),
    ],
)
def test_a_browser_may_read_what_a_415_accepts(
    browser_api: httpx.Client, alice: ApiUser, sent: dict[str, str], field: str, accepted: str
) -> None:
    """A fetch() caller that sent a compressed body learns from Accept-Encoding to send it plain; one
    that sent a string body (text/plain, fetch's default) learns from Accept which type to name."""
    response = browser_api.post(
        alice.tasks_url, content=b'{"title": "t"}', headers={**alice.headers, "Origin": ORIGIN, **sent}
    )
    assert response.status_code == 415
    assert response.headers[field] == accepted
    assert field in response.headers["access-control-expose-headers"].lower().split(", ")


def test_a_browser_may_read_a_413_for_a_body_declared_too_large(
    browser_api: httpx.Client, alice: ApiUser
) -> None:
    """Answered before the body is read, by the layer that limits bodies: without CORS headers a
    browser sees a network error, and a client retries the same oversized create."""
    response = browser_api.post(
        alice.tasks_url,
        content=b'{"title": "' + b"x" * 70_000 + b'"}',
        headers={**alice.headers, "Origin": ORIGIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["type"] == "urn:todo-api:problem:payload-too-large"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_a_browser_may_read_a_500_and_its_request_id(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug's answer crosses CORS like any other: without its headers fetch() rejects with a network
    error, the X-Request-ID a user would report is out of reach, and a client resends the write. The
    preflight before it and the write itself still have one access line each."""
    alice = new_user()
    # No isolation check while the test runs: the trigger below is the bug, not a finding.
    settings = settings_for(migrated_db_url, cors_origins=[ORIGIN], isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as browser:
        task = browser.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        with psycopg.connect(migrated_db_url, autocommit=True) as db:
            break_task_updates(db)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="api.access"):
            preflight = browser.options(
                alice.task_url(task["id"]),
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "authorization, content-type, if-match",
                },
            )
            broken = browser.put(
                alice.task_url(task["id"]),
                json={"title": "after"},
                headers={**alice.headers, "Origin": ORIGIN, "If-Match": "*"},
            )
    assert preflight.status_code == 200
    assert_problem(broken, 500, "internal-error")
    assert broken.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in broken.headers["access-control-expose-headers"].lower()
    assert broken.headers["x-request-id"]
    route = "/api/{user_id}/tasks/{task_id}"
    logged = [(r.method, r.route, r.status) for r in caplog.records if r.name == "api.access"]  # type: ignore[attr-defined]
    assert logged == [("OPTIONS", route, 200), ("PUT", route, 500)]
    with psycopg.connect(migrated_db_url) as db:
        stored = db.execute("select title from tasks where id = %s", [task["id"]]).fetchall()
    assert stored == [("before",)], "nothing was changed"
