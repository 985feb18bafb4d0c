"""Bad input of every kind gets a clear 4xx problem (RFC 9457) and changes nothing in the database."""

import base64
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app, openapi_document
from api.db.errors import the_function_raising
from api.tasks.listing import CURSOR_MAX_LENGTH
from tests.support import (
    TRANSACTION_WAYS,
    ApiUser,
    as_role,
    assert_problem,
    new_user,
    serving_client,
    settings_for,
)

JSON = "application/json"
MAX_ID = 2**63 - 1
T = "2020-01-01T00:00:00+00:00"
# The problem type each refusal here is, by its status.
REFUSALS = {
    400: "bad-request",
    403: "forbidden",
    404: "not-found",
    415: "unsupported-media-type",
    422: "validation-error",
}


@dataclass(frozen=True)
class Api:
    """Alice's view of the API, and of what the database holds for her."""

    client: httpx.Client
    user: ApiUser
    db: psycopg.Connection[Any]

    def send(
        self, method: str, url: str, body: object = None, content_type: str = JSON, **params: str
    ) -> httpx.Response:
        """`body`: None for no body, bytes as they are, anything else as JSON (NULs and lone
        surrogates are \\u-escaped, as a browser's JSON.stringify would)."""
        content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {**self.user.headers, "Content-Type": content_type}
        return self.client.request(method, url, content=content, params=params, headers=headers)

    def stored(self) -> tuple[list[Any], list[Any]]:
        """Everything stored for the user: the user row and every column of every task."""
        users = self.db.execute("select * from users where id = %s", [self.user.id]).fetchall()
        tasks = self.db.execute(
            "select * from tasks where user_id = %s order by id", [self.user.id]
        ).fetchall()
        return users, tasks

    def refused(
        self,
        method: str,
        url: str,
        body: object = None,
        status: int | tuple[int, ...] = 422,
        *,
        field: str | None = None,
        content_type: str = JSON,
        params: dict[str, str] | None = None,
    ) -> None:
        """Send; expect the problem REFUSALS gives for `status` (or for one of them), naming `field` for
        a 422, and nothing changed."""
        before = self.stored()
        response = self.send(method, url, body, content_type, **(params or {}))
        assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text
        answered = response.status_code
        assert_problem(response, answered, REFUSALS[answered], field if answered == 422 else None)
        assert self.stored() == before


@pytest.fixture
def api(client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]) -> Api:
    return Api(client, alice, api_db)


@pytest.fixture
def task_url(api: Api) -> str:
    created = api.send("POST", api.user.tasks_url, {"title": "Keep", "description": "me", "completed": False})
    assert created.status_code == 201, created.text
    return api.user.task_url(created.json()["id"])


def cursor_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# A cursor as the API issues it, whose spelling holds a `-` and ends in a "0", a character with unused
# bits (so "1" in its place decodes to the same bytes).
AFTER_A_TITLE = cursor_of(["title", "asc", "??>", 1])


# Bad in a POST and in a PUT alike; the other fields are valid, so nothing may be half-applied.
BAD_FIELDS = [
    pytest.param({"title": ""}, "body.title", id="empty-title"),
    pytest.param({"title": " \t\n "}, "body.title", id="blank-title"),
    pytest.param({"title": "x" * 201}, "body.title", id="title-201-chars"),
    pytest.param({"title": "🙂" * 201}, "body.title", id="title-201-emoji"),
    # Counted as sent, as the document's maxLength counts: trimmed, this was a title of 200.
    pytest.param({"title": "x" * 200 + " " * 5000}, "body.title", id="title-200-chars-and-5000-spaces"),
    pytest.param({"title": " "}, "body.title", id="one-space-title"),
    pytest.param({"title": 5}, "body.title", id="number-title"),
    pytest.param({"title": ["a"]}, "body.title", id="list-title"),
    pytest.param({"title": "a\x00b"}, "body.title", id="nul-in-title"),
    pytest.param({"title": "\ud800"}, "body.title", id="lone-surrogate-title"),
    pytest.param({"title": "ok", "description": "x" * 1001}, "body.description", id="description-1001"),
    pytest.param({"title": "ok", "description": "a\x00b"}, "body.description", id="nul-in-description"),
    pytest.param({"title": "ok", "description": 5}, "body.description", id="number-description"),
    pytest.param({"title": "ok", "description": "\udfff"}, "body.description", id="surrogate-description"),
    pytest.param({"title": "ok", "completed": "true"}, "body.completed", id="string-completed"),
    pytest.param({"title": "ok", "completed": 1}, "body.completed", id="int-completed"),
    pytest.param({"title": "ok", "completed": None}, "body.completed", id="null-completed"),
    pytest.param({"title": "ok", "no_such_field": 1}, "body.no_such_field", id="unknown-field"),
    pytest.param({"title": "ok", "user_id": "someone-else"}, "body.user_id", id="user_id-field"),
    pytest.param({"title": "ok", "id": 1}, "body.id", id="id-field"),
    pytest.param({"title": "ok", "created_at": T}, "body.created_at", id="created_at-field"),
]


# A JSON value of each of JSON Schema's types, to send where the document names none of them.
_VALUE_OF_TYPE: dict[str, object] = {
    "string": "1",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}
# Times a field of `format: date-time` may not take: with no offset, and an instant past the years a
# Python datetime holds in UTC, which 0015's CHECK would refuse naming only `body`.
_NOT_DATE_TIMES = ("2026-01-01T00:00:00", "9999-12-31T23:00:00-05:00")


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property's schema admits ("number" admits integers too)."""
    named = schema["type"] if "type" in schema else [option["type"] for option in schema["anyOf"]]
    types = set(named) if isinstance(named, list) else {named}
    return types | ({"integer"} if "number" in types else set())


def _body_fields() -> list[Any]:
    """Each field of each request body the document declares, with the types and format it names."""
    document = openapi_document()
    fields = []
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            if "requestBody" not in operation:
                continue
            reference = operation["requestBody"]["content"][JSON]["schema"]["$ref"]
            model = document["components"]["schemas"][reference.rsplit("/", 1)[1]]
            for name, schema in model["properties"].items():
                formats = {option.get("format") for option in [schema, *schema.get("anyOf", [])]}
                where = f"{method}-{path}-{name}"
                fields.append(pytest.param(method.upper(), path, name, _types(schema), formats, id=where))
    return fields


@pytest.mark.parametrize(("method", "path", "name", "types", "formats"), _body_fields())
def test_every_body_field_refuses_what_its_schema_does_not_admit(
    api: Api, task_url: str, method: str, path: str, name: str, types: set[str], formats: set[str | None]
) -> None:
    """pydantic's lax types take more than the document says (AwareDatetime reads a JSON number as
    seconds since 1970, and a bool "true"), which the typed client and other users cannot know: a field
    added to a body is held here to its schema, whatever BAD_FIELDS lists by hand."""
    url = path.replace("{user_id}", api.user.id).replace("{task_id}", task_url.rsplit("/", 1)[1])
    wrong = [value for kind, value in _VALUE_OF_TYPE.items() if kind not in types]
    if "date-time" in formats:
        wrong += _NOT_DATE_TIMES
    assert wrong, "a field that admits any JSON at all"
    for value in wrong:
        api.refused(method, url, {name: value}, field=f"body.{name}")


@pytest.mark.parametrize(("body", "field"), [*BAD_FIELDS, pytest.param({}, "body.title", id="no-title")])
def test_post_refuses_bad_fields(api: Api, body: object, field: str) -> None:
    api.refused("POST", api.user.tasks_url, body, field=field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        *BAD_FIELDS,
        pytest.param({"title": None}, "body.title", id="null-title"),
        pytest.param({"completed": None}, "body.completed", id="only-null-completed"),
        pytest.param({"title": "Changed", "completed": "yes"}, "body.completed", id="good-and-bad-field"),
    ],
)
def test_put_refuses_bad_fields(api: Api, task_url: str, body: object, field: str) -> None:
    api.refused("PUT", task_url, body, field=field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "body.completed", id="empty-object"),
        pytest.param({"completed": "yes"}, "body.completed", id="string"),
        pytest.param({"completed": "true"}, "body.completed", id="string-true"),
        pytest.param({"completed": 1}, "body.completed", id="int"),
        pytest.param({"completed": None}, "body.completed", id="null-completed"),
        pytest.param({"done": True}, "body.done", id="unknown-field"),
        pytest.param({"completed": True, "title": "x"}, "body.title", id="extra-field"),
        pytest.param([True], "body", id="array"),
        pytest.param(b"null", "body", id="json-null"),
    ],
)
def test_complete_takes_only_completed_bool(api: Api, task_url: str, body: object, field: str) -> None:
    api.refused("PATCH", f"{task_url}/complete", body, field=field)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b"{not json", JSON, (400, 422), id="malformed-json"),
        pytest.param(b'{"title": "caf\xe9"}', JSON, (400, 422), id="invalid-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, JSON, (400, 422), id="deeply-nested"),
        pytest.param('{"title": "x"}'.encode("utf-16-le"), JSON, 422, id="utf-16-without-bom"),
        # Not sent as JSON: 415 naming the type, whatever the bytes (tests/api/test_frontend.py).
        pytest.param(b'{"title": "x"}', "text/plain", 415, id="text-plain"),
        pytest.param(b"title=x", "application/x-www-form-urlencoded", 415, id="form"),
        pytest.param(b'[{"title": "x", "completed": true}]', JSON, 422, id="array-of-object"),
        pytest.param(b"[]", JSON, 422, id="empty-array"),
        pytest.param(b'"x"', JSON, 422, id="string"),
        pytest.param(b"42", JSON, 422, id="number"),
        pytest.param(b"true", JSON, 422, id="boolean"),
    ],
)
def test_body_must_be_a_json_object(
    api: Api, task_url: str, method: str, body: bytes, content_type: str, status: int | tuple[int, ...]
) -> None:
    url = {"POST": api.user.tasks_url, "PUT": task_url, "PATCH": f"{task_url}/complete"}[method]
    api.refused(method, url, body, status, content_type=content_type, field="body")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_json_in_utf_16_or_32_is_refused_as_any_body_not_in_utf8(
    api: Api, task_url: str, method: str, encoding: str
) -> None:
    """RFC 8259, section 8.1: JSON between systems is UTF-8. json.loads also reads UTF-16 and UTF-32
    by their byte order mark, and the API took such a body: a create made a task."""
    url = {"POST": api.user.tasks_url, "PUT": task_url, "PATCH": f"{task_url}/complete"}[method]
    body = '{"completed": true}' if method == "PATCH" else '{"title": "x", "completed": true}'
    before = api.stored()

    refused = api.send(method, url, ("\ufeff" + body).encode(encoding))

    assert refused.status_code == 422, refused.text
    assert refused.json() == api.send(method, url, b'{"title": "caf\xe9"}').json()  # as Latin-1 is
    assert api.stored() == before


def test_json_in_utf8_after_a_byte_order_mark_is_read(api: Api) -> None:
    """RFC 8259 lets a parser skip a UTF-8 byte order mark; json.loads did, and still does."""
    created = api.send("POST", api.user.tasks_url, '\ufeff{"title": "x"}'.encode())
    assert created.status_code == 201, created.text
    assert api.db.execute("select title from tasks where user_id = %s", [api.user.id]).fetchall() == [("x",)]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            b"[" * 1500 + b"]" * 1500,
            "The body's arrays and objects are nested too deeply to read.",
            id="nested-1500-deep",
        ),
        pytest.param(
            b'{"title": "x", "completed": ' + b"1" * 5000 + b"}",
            "The body has a number longer than 4300 digits.",
            id="number-of-5000-digits",
        ),
        pytest.param(
            b'{"title": "checked", "completed": true, "title": "stored"}',
            'The body names the member "title" more than once.',
            id="a-member-named-twice",
        ),
        pytest.param(
            b'{"title": "x", "extra": {"k": 1, "k": 2}}',
            'The body names the member "k" more than once.',
            id="a-member-named-twice-in-an-inner-object",
        ),
        pytest.param(
            b'{"' + b"n" * 100 + b'": 1, "' + b"n" * 100 + b'": 2}',
            'The body names the member "' + "n" * 64 + '"... more than once.',
            id="a-long-name-given-twice-is-shown-cut",
        ),
        pytest.param(
            b'{"title": "x", "completed": NaN}',
            "The body has NaN, which is not a JSON value.",
            id="nan",
        ),
        pytest.param(
            b'{"title": "x", "completed": -Infinity}',
            "The body has -Infinity, which is not a JSON value.",
            id="minus-infinity",
        ),
        pytest.param(
            b'{"title": "x", "extra": [Infinity]}',
            "The body has Infinity, which is not a JSON value.",
            id="infinity-in-an-unknown-member",
        ),
    ],
)
def test_json_the_parser_will_not_read_is_refused_saying_why(
    api: Api, task_url: str, method: str, body: bytes, message: str
) -> None:
    """RFC 8259, section 9, lets a parser set limits; such a body was called not JSON in UTF-8. A
    member named twice (section 4: its meaning is each parser's) was read by its last value, where
    something in front may have read the first. NaN and Infinity, which JSON lacks (section 6), were
    read as floats and refused as a field's wrong type."""
    url = {"POST": api.user.tasks_url, "PUT": task_url, "PATCH": f"{task_url}/complete"}[method]
    before = api.stored()

    refused = api.send(method, url, body)

    problem = assert_problem(refused, 422, "validation-error")
    assert problem["errors"] == [{"field": "body", "message": message}]
    assert api.stored() == before


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_an_unknown_members_long_name_is_shown_cut_as_one_named_twice_is(
    api: Api, task_url: str, method: str
) -> None:
    """A 30,000-character unknown name stood whole in both `detail` and `errors`: a 60 KB answer to a
    30 KB body, where the same name given twice was shown cut to its first 64 characters."""
    url = {"POST": api.user.tasks_url, "PUT": task_url, "PATCH": f"{task_url}/complete"}[method]
    valid = {"title": "x"} if method != "PATCH" else {"completed": True}
    body = json.dumps({**valid, "k" * 30_000: 1}).encode()
    before = api.stored()

    refused = api.send(method, url, body)

    shown = "body." + "k" * 64 + "..."
    problem = assert_problem(refused, 422, "validation-error")
    assert [error["field"] for error in problem["errors"]] == [shown]
    assert problem["detail"] == f"Invalid input in: {shown}."
    assert len(refused.content) < 1_000
    assert api.stored() == before


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("body", [b"", b"null"], ids=["empty", "json-null"])
def test_post_and_put_need_a_body(api: Api, task_url: str, method: str, body: bytes) -> None:
    api.refused(method, api.user.tasks_url if method == "POST" else task_url, body, field="body")


def test_a_422_lists_the_first_20_invalid_fields_and_counts_the_rest(api: Api) -> None:
    """6,900 short unknown keys, under the body limit, were each listed in `errors` and `detail`: a
    516 KB answer to a 58 KB body. The title is missing too, so 6,901 fields are invalid."""
    body = ("{" + ",".join(f'"{i:x}":0' for i in range(6900)) + "}").encode()
    before = api.stored()

    refused = api.send("POST", api.user.tasks_url, body)

    problem = assert_problem(refused, 422, "validation-error", "body.title")
    listed = ["body.title", *(f"body.{i:x}" for i in range(19))]
    assert [error["field"] for error in problem["errors"]] == listed
    assert problem["detail"] == f"Invalid input in: {', '.join(listed)}, and 6881 more."
    assert api.stored() == before


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[("status", value) for value in ("done", "", "ALL")],
        *[("sort", value) for value in ("no_such_sort", "", "Title")],
        *[("order", value) for value in ("up", "", "DESC")],
        *[
            ("limit", value)
            for value in ("0", "-1", "501", str(10**30), "abc", "1.5", "", "5_0", "+5", " 5", "5.0")
        ],
        # A second spelling of 5, and one a next page's link repeats past the server's head limit.
        *[("limit", value) for value in ("05", "0" * 999 + "1")],
        pytest.param("q", "x" * 201, id="q-201-chars"),
        pytest.param("q", "a\x00b", id="q-nul"),
    ],
)
def test_list_refuses_bad_query(api: Api, name: str, value: str) -> None:
    api.refused("GET", api.user.tasks_url, field=f"query.{name}", params={name: value})


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        pytest.param("status=completed&status=pending", ["query.status"], id="status"),
        pytest.param("q=milk&q=milk", ["query.q"], id="q-same-value-twice"),
        pytest.param("limit=5&sort=title&limit=500", ["query.limit"], id="limit"),
        pytest.param("order=asc&order=", ["query.order"], id="order-then-empty"),
        pytest.param("cursor=a&cursor=b", ["query.cursor"], id="cursor"),
        pytest.param("sort=title&q=a&sort=title&q=b", ["query.sort", "query.q"], id="two-of-them"),
    ],
)
def test_list_refuses_a_parameter_given_twice(api: Api, query: str, fields: list[str]) -> None:
    """FastAPI would read the last value and a proxy in front may read the first: neither is picked."""
    response = api.client.get(f"{api.user.tasks_url}?{query}", headers=api.user.headers)
    body = assert_problem(response, 422, "validation-error", fields[0])
    assert sorted(error["field"] for error in body["errors"]) == sorted(fields)
    assert body["detail"] == f"Invalid input in: {', '.join(error['field'] for error in body['errors'])}."


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        pytest.param("q=%FF%FE", ["query.q"], id="not-utf8"),
        pytest.param("q=%ED%A0%80", ["query.q"], id="encoded-surrogate"),
        pytest.param("q=caf%E9", ["query.q"], id="latin-1"),
        pytest.param("status=all&q=milk%C3", ["query.q"], id="cut-short"),
        pytest.param("sort=%FF&q=%FF", ["query.sort", "query.q"], id="two-of-them"),
    ],
)
def test_list_refuses_a_parameter_not_in_utf8(api: Api, query: str, fields: list[str]) -> None:
    """Starlette decodes such bytes to U+FFFD: the list searched for a character never sent."""
    response = api.client.get(f"{api.user.tasks_url}?{query}", headers=api.user.headers)
    body = assert_problem(response, 422, "validation-error", fields[0])
    assert sorted(error["field"] for error in body["errors"]) == sorted(fields)


def test_a_parameter_both_repeated_and_not_in_utf8_is_named_once_in_the_detail(api: Api) -> None:
    """Two errors of one parameter, each with its message; the detail names the parameter once."""
    response = api.client.get(f"{api.user.tasks_url}?q=%FF&q=milk", headers=api.user.headers)
    body = assert_problem(response, 422, "validation-error", "query.q")
    assert [error["field"] for error in body["errors"]] == ["query.q", "query.q"]
    assert body["detail"] == "Invalid input in: query.q."


@pytest.mark.parametrize("query", ["q=%EF%BF%BD", "q=%C3%A9t%C3%A9", "unknown=%FF", "%FF=1", "q=a+b%20c"])
def test_list_reads_parameters_in_utf8_and_ignores_unknown_ones(api: Api, query: str) -> None:
    """U+FFFD sent as UTF-8 is a character like any other; a parameter the list does not know may be
    anything."""
    assert api.send("POST", api.user.tasks_url, {"title": "\ufffd été a b c"}).status_code == 201
    response = api.client.get(f"{api.user.tasks_url}?{query}", headers=api.user.headers)
    assert response.status_code == 200, response.text
    assert [task["title"] for task in response.json()] == ["\ufffd été a b c"]


@pytest.mark.parametrize(
    ("sort", "cursor"),
    [
        pytest.param("created", "!!!", id="garbage"),
        pytest.param("created", "ü", id="non-ascii"),
        pytest.param("created", "A" * (CURSOR_MAX_LENGTH + 1), id="too-long"),
        pytest.param("created", "bm90IGpzb24", id="not-json"),
        pytest.param("created", cursor_of({"a": 1}), id="object"),
        pytest.param("created", cursor_of(["created", "desc", 1]), id="too-short"),
        pytest.param("created", cursor_of(["no_such_sort", "desc", T, 1]), id="unknown-sort"),
        pytest.param("created", cursor_of(["created", "down", T, 1]), id="unknown-order"),
        pytest.param("created", cursor_of(["created", "desc", T, 0]), id="id-0"),
        pytest.param("created", cursor_of(["created", "desc", T, 2**63]), id="id-2**63"),
        pytest.param("created", cursor_of(["created", "desc", T, "1"]), id="id-string"),
        pytest.param("created", cursor_of(["created", "desc", T, True]), id="id-boolean"),
        pytest.param("created", cursor_of(["created", "desc", "2020-01-01T00:00:00", 1]), id="naive-time"),
        pytest.param("created", cursor_of(["created", "desc", "yesterday", 1]), id="bad-time"),
        pytest.param("created", cursor_of(["created", "desc", "0001-01-01T00:00+16:00", 1]), id="year-0"),
        pytest.param("title", cursor_of(["title", "asc", 5, 1]), id="number-title"),
        pytest.param("title", cursor_of(["title", "asc", "a\x00", 1]), id="nul-title"),
        pytest.param("title", cursor_of(["title", "asc", "\ud800", 1]), id="surrogate-title"),
        # One spelling, as issued (the contract probe of stop 85: each of these was the page after ??>).
        pytest.param("title", f"{AFTER_A_TITLE}=", id="padded"),
        pytest.param("title", f"{AFTER_A_TITLE[:8]}!!..{AFTER_A_TITLE[8:]}", id="junk-inside"),
        pytest.param("title", AFTER_A_TITLE.replace("-", "+"), id="standard-alphabet"),
        pytest.param("title", f"{AFTER_A_TITLE[:-1]}1", id="unused-bits-set"),
        # As deep as the longest cursor accepted holds: past the parser's stack, once a 500.
        pytest.param(
            "created",
            base64.urlsafe_b64encode(b"[" * (CURSOR_MAX_LENGTH * 3 // 4)).decode().rstrip("="),
            id="nested-deeper-than-the-parser-reads",
        ),
    ],
)
def test_list_refuses_bad_cursor(api: Api, sort: str, cursor: str) -> None:
    api.refused("GET", api.user.tasks_url, field="query.cursor", params={"sort": sort, "cursor": cursor})


def test_cursor_only_fits_the_sort_it_came_from(api: Api) -> None:
    for title in ("a", "b", "c"):
        assert api.send("POST", api.user.tasks_url, {"title": title}).status_code == 201
    page = api.send("GET", api.user.tasks_url, sort="title", limit="1")
    match = re.search(r"[?&]cursor=([^&>]+)", page.headers["link"])
    assert match is not None
    cursor = match.group(1)
    assert api.send("GET", api.user.tasks_url, sort="title", cursor=cursor).status_code == 200
    tampered = ("X" if cursor[0] != "X" else "Y") + cursor[1:]
    for params in (
        {"sort": "created", "cursor": cursor},
        {"sort": "title", "order": "desc", "cursor": cursor},
        {"sort": "title", "cursor": tampered},
        {"sort": "title", "cursor": cursor[: len(cursor) // 2]},
    ):
        api.refused("GET", api.user.tasks_url, field="query.cursor", params=params)
    # A bad order is reported alone, not also as a cursor "issued for another sort or order" (the
    # default one, which a cursor of the other order did not fit).
    descending = api.send("GET", api.user.tasks_url, sort="title", order="desc", limit="1")
    match = re.search(r"[?&]cursor=([^&>]+)", descending.headers["link"])
    assert match is not None
    bad_order = api.send("GET", api.user.tasks_url, sort="title", order="up", cursor=match.group(1))
    problem = assert_problem(bad_order, 422, "validation-error", "query.order")
    assert [error["field"] for error in problem["errors"]] == ["query.order"]


@pytest.mark.parametrize("offset", ["+15:59", "+16:00", "-16:00", "+05:30:15.500000"])
def test_a_cursor_names_its_instant_in_any_offset_python_reads(api: Api, offset: str) -> None:
    """Postgres takes offsets up to 15:59 and in whole seconds; the cursor's instant is what counts."""
    for title in ("a", "b", "c"):
        assert api.send("POST", api.user.tasks_url, {"title": title}).status_code == 201
    page = api.send("GET", api.user.tasks_url, limit="1")
    match = re.search(r"[?&]cursor=([^&>]+)", page.headers["link"])
    assert match is not None
    sort, order, value, task_id = json.loads(base64.urlsafe_b64decode(match.group(1) + "=" * 3))
    shifted = datetime.fromisoformat(value).astimezone(datetime.strptime(offset, "%z").tzinfo)
    assert shifted.isoformat().endswith(offset)
    expected = api.send("GET", api.user.tasks_url, cursor=match.group(1))
    moved = cursor_of([sort, order, shifted.isoformat(), task_id])
    answer = api.send("GET", api.user.tasks_url, cursor=moved)
    assert answer.status_code == 200, answer.text
    titles = [task["title"] for task in answer.json()]
    assert titles == [task["title"] for task in expected.json()] == ["b", "a"]


def test_a_cursor_issued_with_its_title_escaped_as_ascii_still_pages(api: Api) -> None:
    """Cursors issued before titles were written unescaped (`json.dumps` with ensure_ascii) name the
    same place as today's."""
    for title in ("漢字 a", "漢字 b", "漢字 c"):
        assert api.send("POST", api.user.tasks_url, {"title": title}).status_code == 201
    page = api.send("GET", api.user.tasks_url, sort="title", limit="1")
    match = re.search(r"[?&]cursor=([^&>]+)", page.headers["link"])
    assert match is not None
    as_issued = json.loads(base64.urlsafe_b64decode(match.group(1) + "=" * 3))
    assert as_issued[2] == "漢字 a"
    expected = api.send("GET", api.user.tasks_url, sort="title", cursor=match.group(1))
    answer = api.send("GET", api.user.tasks_url, sort="title", cursor=cursor_of(as_issued))
    assert answer.status_code == 200, answer.text
    assert [task["title"] for task in answer.json()] == [task["title"] for task in expected.json()]
    assert [task["title"] for task in answer.json()] == ["漢字 b", "漢字 c"]


BODIES = {"GET": None, "DELETE": None, "PUT": {"title": "Changed"}, "PATCH": {"completed": True}}


@pytest.mark.parametrize("bad_id", ["0", "-1", str(2**63), str(10**30), "abc", "1.5"])
@pytest.mark.parametrize("method", list(BODIES))
def test_task_id_out_of_range(api: Api, task_url: str, method: str, bad_id: str) -> None:
    url = api.user.task_url(bad_id) + ("/complete" if method == "PATCH" else "")
    api.refused(method, url, BODIES[method], field="path.task_id")


@pytest.mark.parametrize("method", list(BODIES))
def test_largest_task_id_is_just_not_found(api: Api, task_url: str, method: str) -> None:
    url = api.user.task_url(MAX_ID) + ("/complete" if method == "PATCH" else "")
    api.refused(method, url, BODIES[method], 404)


@pytest.mark.parametrize(
    "path_user",
    [
        pytest.param("u" * 300, id="300-chars"),
        pytest.param("%C3%A1lice", id="unicode"),
        pytest.param("%F0%9F%99%82", id="emoji"),
        pytest.param("%00", id="nul"),
        pytest.param("%20alice%27%3B--", id="quote-and-space"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_odd_user_id_in_path_is_forbidden(api: Api, path_user: str, method: str) -> None:
    everyone = "select (select count(*) from users), (select count(*) from tasks)"
    before = api.db.execute(everyone).fetchone()
    body = {"title": "Sneaky"} if method == "POST" else None
    api.refused(method, f"/api/{path_user}/tasks", body, 403)
    assert api.db.execute(everyone).fetchone() == before


UNICODE_TITLES = {
    "emoji": "Buy 🥛 and 🍞",
    "zwj-sequence": "👩‍👩‍👧‍👦 dinner",
    "flags": "🇺🇦 🏳️‍🌈",
    "hebrew": "שלום עולם",
    "arabic": "مرحبا بالعالم",
    "rtl-override": "\u202eexe.txt\u202c",
    "combining-vs-precomposed": "e\u0301 and \u00e9",
    "zalgo": "Z\u0337\u0322a\u0338l\u0335g\u0336o\u0334",
    "cjk": "日本語のタスク",
    "200-emoji": "🙂" * 200,
}


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        *[pytest.param(title, title, id=name) for name, title in UNICODE_TITLES.items()],
        pytest.param("  padded\t", "padded", id="trimmed"),
        pytest.param(" " + "x" * 198 + " ", "x" * 198, id="200-chars-as-sent"),
        pytest.param("\u3000x\u0085", "x", id="unicode-white-space-trimmed"),
        pytest.param("\ufeffx\x1c", "\ufeffx\x1c", id="not-white-space-kept"),
    ],
)
def test_unicode_titles_round_trip(api: Api, sent: str, stored: str) -> None:
    created = api.send("POST", api.user.tasks_url, {"title": sent, "description": sent})
    assert created.status_code == 201, created.text
    task = created.json()
    assert (task["title"], task["description"]) == (stored, sent)
    fetched = api.send("GET", api.user.task_url(task["id"])).json()
    assert (fetched["title"], fetched["description"]) == (stored, sent)
    row = api.db.execute("select title, description from tasks where id = %s", [task["id"]]).fetchone()
    assert row == (stored, sent)


# A DBA's trigger that refuses what a DBA's CHECK would: each was a 500 "bug on our side" (the database
# probe of stop 81). Its message holds the title, which the answer must not.
_DBAS_TRIGGER = """
create function {function}() returns trigger language plpgsql as $$
begin
    {refuse};
    return NEW;
end $$;
create trigger dba_no_boom before insert or update on public.tasks
    for each row execute function {function}();
"""
_RAISE = "if NEW.title ~ 'BOOM' then raise exception 'title % is refused', NEW.title; end if"
_RAISE_AS = (
    "if NEW.title ~ 'BOOM' then"
    " raise exception 'title % is refused', NEW.title using errcode = '{code}'; end if"
)


@pytest.mark.parametrize(
    "dba_change",
    [
        pytest.param(
            "alter table public.tasks add constraint dba_no_boom check (title !~ 'BOOM') not valid",
            id="check",
        ),
        pytest.param(_DBAS_TRIGGER.format(function="public.dba_no_boom", refuse=_RAISE), id="raise"),
        pytest.param(
            _DBAS_TRIGGER.format(
                function="public.dba_no_boom",
                refuse="assert NEW.title !~ 'BOOM', format('title %s is refused', NEW.title)",
            ),
            id="assert",
        ),
        # A name Postgres quotes in the error's context (the verification probe of stop 86).
        pytest.param(
            'create schema "DBA rules";'
            + _DBAS_TRIGGER.format(function='"DBA rules"."dba_no_boom rule"', refuse=_RAISE),
            id="raise-in-quoted-names",
        ),
        # Whatever SQLSTATE the RAISE chose: each was a 500, a 409 or an isolation finding (stop 86's note).
        *[
            pytest.param(
                _DBAS_TRIGGER.format(function="public.dba_no_boom", refuse=_RAISE_AS.format(code=code)),
                id=f"raise-as-{code}",
            )
            for code in (
                "check_violation",
                "not_null_violation",
                "unique_violation",
                "insufficient_privilege",
                "invalid_parameter_value",
                "U0001",
            )
        ],
    ],
)
def test_a_write_a_dbas_check_constraint_refuses_is_a_422_naming_it_and_changes_nothing(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture, dba_change: str
) -> None:
    """A CHECK the API knows nothing of (a DBA's), or a DBA's trigger that raises an exception or fails
    an assertion, refuses a create, a keyed create and an update: each is a 422 naming the constraint
    (the function), never the values, nothing is stored or changed (no task, no key, no event), and
    each is logged once at WARNING by that name alone."""
    user = new_user()
    stored = (
        "select (select json_agg(t order by t.id) from tasks t where t.user_id = %(u)s),"
        " (select count(*) from idempotency_keys where user_id = %(u)s),"
        " (select count(*) from task_events where user_id = %(u)s)"
    )
    with (
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        created = client.post(user.tasks_url, json={"title": "Fine"}, headers=user.headers)
        assert created.status_code == 201, created.text
        db.execute(dba_change)
        before = db.execute(stored, {"u": user.id}).fetchone()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            refused = [
                client.post(user.tasks_url, json={"title": "BOOM one"}, headers=user.headers),
                client.post(
                    user.tasks_url,
                    json={"title": "BOOM two"},
                    headers={**user.headers, "Idempotency-Key": "k-1"},
                ),
                client.put(
                    user.task_url(created.json()["id"]), json={"title": "BOOM three"}, headers=user.headers
                ),
            ]
        for response in refused:
            body = assert_problem(response, 422, "validation-error", "body")
            assert "dba_no_boom" in json.dumps(body), body
            assert "BOOM" not in response.text.replace("dba_no_boom", ""), body
        assert db.execute(stored, {"u": user.id}).fetchone() == before
        warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 3, warnings
        assert all("dba_no_boom" in line and "BOOM " not in line for line in warnings), warnings
        # The key was not stored, so it is free for the create the constraint lets through.
        again = client.post(
            user.tasks_url, json={"title": "Fine again"}, headers={**user.headers, "Idempotency-Key": "k-1"}
        )
        assert again.status_code == 201, again.text


@pytest.mark.parametrize("way", TRANSACTION_WAYS)
def test_a_deferred_dbas_trigger_refusing_at_commit_is_a_422_and_a_retry_meets_the_same(
    migrated_db_url: str, way: dict[str, object]
) -> None:
    """Raised at COMMIT by a deferred constraint trigger, the refusal was a 503 outcome-unknown ("it may
    or may not have been made. Retry with the same Idempotency-Key"), and every retry met it again: a
    client that followed the advice looped for as long as the rule stood (the verification probe of
    stop 87). COMMIT failed, so nothing committed: a 422, each time, and the next request is served."""
    user = new_user()
    trigger = (
        _DBAS_TRIGGER.format(function="public.dba_no_boom", refuse=_RAISE)
        .replace("create trigger dba_no_boom before", "create constraint trigger dba_no_boom after")
        .replace("for each row", "deferrable initially deferred for each row")
    )
    with (
        serving_client(create_app(settings_for(as_role(migrated_db_url), **way))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        db.execute(trigger)
        keyed = {**user.headers, "Idempotency-Key": "k-1"}
        for _ in range(2):
            refused = client.post(user.tasks_url, json={"title": "BOOM"}, headers=keyed)
            body = assert_problem(refused, 422, "validation-error", "body")
            assert "dba_no_boom" in json.dumps(body), body
        fine = client.post(user.tasks_url, json={"title": "Fine"}, headers=user.headers)
        assert fine.status_code == 201, fine.text
        stored = "select array_agg(title), (select count(*) from idempotency_keys where user_id = %(u)s)"
        assert db.execute(f"{stored} from tasks where user_id = %(u)s", {"u": user.id}).fetchone() == (
            ["Fine"],
            0,
        )


@pytest.mark.parametrize("code", ["read_only_sql_transaction", "program_limit_exceeded", "disk_full"])
def test_a_dbas_raise_that_tells_of_the_database_keeps_its_answer(migrated_db_url: str, code: str) -> None:
    """A trigger that raises what a read-only database, a server's limit or a full disk would (a DBA
    freezing writes, say) is answered as those are, a 503 that blames no input: 25xxx and 54xxx were
    422s saying the value was refused (the verification probe of stop 87)."""
    user = new_user()
    with (
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        db.execute(_DBAS_TRIGGER.format(function="public.dba_no_boom", refuse=_RAISE_AS.format(code=code)))
        refused = client.post(user.tasks_url, json={"title": "BOOM"}, headers=user.headers)
        assert_problem(refused, 503, "database-unavailable")
        assert "BOOM" not in refused.text
        assert db.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone() == (0,)


def test_a_dbas_raise_is_known_by_its_source_whatever_language_postgres_speaks() -> None:
    """The embedded Postgres has no translations, so this reads the context lines a German one wrote
    (the verification probe of stop 87, Debian's postgresql-15 with lc_messages de_DE): matched by the
    English words, a DBA's RAISE there was a 500, or with 42501 a 503 for every user."""
    for context, function in [
        ("PL/pgSQL-Funktion public.dba_rule() Zeile 2 bei RAISE", "public.dba_rule()"),
        ("fonction PL/pgSQL public.dba_rule(integer) ligne 2 à RAISE", "public.dba_rule(integer)"),
        (
            'PL/pgSQL function "DBA rules"."no boom"(text, "my type") line 3 at ASSERT',
            '"DBA rules"."no boom"(text, "my type")',
        ),
        ('PL/pgSQL function "app.x".f() line 3 at RAISE', '"app.x".f()'),
        ("PL/pgSQL function app.count_tasks() line 12 at RAISE", None),
    ]:
        assert the_function_raising(context) == function, context


def test_a_delete_a_dbas_trigger_refuses_is_a_422_naming_it_and_deletes_nothing(migrated_db_url: str) -> None:
    """A DBA's trigger that raises before a delete (completed tasks are kept, say) was a 500 "bug on
    our side"; a 422 naming the task and the trigger's function, never its message, and the task and
    its events are as they were."""
    user = new_user()
    with (
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        created = client.post(user.tasks_url, json={"title": "Keep me"}, headers=user.headers)
        assert created.status_code == 201, created.text
        db.execute(
            "create function public.dba_keeps_tasks() returns trigger language plpgsql as $$"
            " begin raise exception 'task % is kept', OLD.title; end $$;"
            " create trigger dba_keeps_tasks before delete on public.tasks"
            " for each row execute function public.dba_keeps_tasks()"
        )
        stored = (
            "select (select count(*) from tasks where id = %(t)s),"
            " (select count(*) from task_events where user_id = %(u)s)"
        )
        before = db.execute(stored, {"t": created.json()["id"], "u": user.id}).fetchone()
        refused = client.delete(user.task_url(created.json()["id"]), headers=user.headers)
        body = assert_problem(refused, 422, "validation-error", "path.task_id")
        assert body["errors"] == [
            {
                "field": "path.task_id",
                "message": "The database refuses to delete this task by its rule public.dba_keeps_tasks(); "
                "nothing was changed.",
            }
        ]
        assert "Keep me" not in refused.text
        assert db.execute(stored, {"t": created.json()["id"], "u": user.id}).fetchone() == before == (1, 1)


def test_a_toggle_a_dbas_trigger_refuses_names_the_task_not_a_body_it_did_not_send(
    migrated_db_url: str,
) -> None:
    """A toggle sends no body: refused by a DBA's trigger, its 422 named `body` (stop 86's first
    verification probe); it names the task, as a refused delete does, and the task is as it was. A
    toggle with a body (`{"completed": true}`) still names the body."""
    user = new_user()
    with (
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        created = client.post(user.tasks_url, json={"title": "Open"}, headers=user.headers)
        assert created.status_code == 201, created.text
        db.execute(
            "create function public.dba_keeps_open() returns trigger language plpgsql as $$"
            " begin if NEW.completed then raise exception 'task % stays open', OLD.title; end if;"
            " return NEW; end $$;"
            " create trigger dba_keeps_open before update on public.tasks"
            " for each row execute function public.dba_keeps_open()"
        )
        url = f"{user.task_url(created.json()['id'])}/complete"
        toggled = client.patch(url, headers=user.headers)
        body = assert_problem(toggled, 422, "validation-error", "path.task_id")
        assert body["errors"] == [
            {
                "field": "path.task_id",
                "message": "The database refuses this change to the task by its rule "
                "public.dba_keeps_open(); nothing was changed.",
            }
        ]
        completed = client.patch(url, json={"completed": True}, headers=user.headers)
        assert_problem(completed, 422, "validation-error", "body")
        assert "Open" not in toggled.text + completed.text
        assert db.execute("select completed from tasks where id = %s", [created.json()["id"]]).fetchone() == (
            False,
        )


@pytest.mark.parametrize(
    ("dba_change", "write", "rule"),
    [
        pytest.param(
            "alter table public.tasks alter column description set not null",
            {"title": "No description", "description": None},
            "its rule that description is NOT NULL",
            id="not-null",
        ),
        pytest.param(
            "alter table public.tasks alter column title type varchar(10)",
            {"title": "Longer than ten"},
            "its column type (value too long for type character varying(10))",
            id="narrower-type",
        ),
    ],
)
def test_a_write_a_dbas_not_null_or_narrower_column_refuses_is_a_422_as_for_a_check(
    migrated_db_url: str,
    dba_change: str,
    write: dict[str, str | None],
    rule: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each was a 500 "bug on our side" for every such create, for good, where the same DBA's CHECK
    was a 422 naming it (the database-settings probe of stop 81). Nothing is stored; an update that
    breaks the rule is refused the same way and leaves the task as it was, and its connection goes back
    to the pool rolled back (else the pool warns "rolling back returned connection" at each, naming no
    cause: the mutation probe of stop 82)."""
    user = new_user()
    with (
        caplog.at_level(logging.WARNING, logger="psycopg.pool"),
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as client,
        psycopg.connect(migrated_db_url, autocommit=True) as db,
    ):
        created = client.post(
            user.tasks_url, json={"title": "Fine", "description": "d"}, headers=user.headers
        )
        assert created.status_code == 201, created.text
        db.execute(dba_change)
        stored = "select json_agg(t order by t.id) from tasks t where t.user_id = %s"
        before = db.execute(stored, [user.id]).fetchone()

        refused = [
            client.post(user.tasks_url, json=write, headers={**user.headers, "Idempotency-Key": "k-1"}),
            client.put(user.task_url(created.json()["id"]), json=write, headers=user.headers),
        ]

        for response in refused:
            body = assert_problem(response, 422, "validation-error", "body")
            assert body["errors"] == [
                {
                    "field": "body",
                    "message": f"The database refuses this value by {rule}; nothing was changed.",
                }
            ]
        assert db.execute(stored, [user.id]).fetchone() == before
        assert db.execute(
            "select count(*) from idempotency_keys where user_id = %s", [user.id]
        ).fetchone() == (0,)
    assert [record.getMessage() for record in caplog.records if record.name == "psycopg.pool"] == []
