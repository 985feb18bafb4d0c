"""If-Match and If-None-Match never answer 500, whatever the client writes in them, and the document
says exactly which values are malformed.

An entity-tag naming a version the task cannot have (past Postgres' `integer`, thousands of digits,
a leading zero) is simply a tag that does not match. The property-based tests write well-formed
lists over RFC 9110's grammar, where they know the answer, and junk, where they know only what the
answer must not be, or that the parser and the document's `pattern` must agree on it.
"""

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.app import create_app, openapi_document
from api.http.conditional import entity_tags
from api.http.problems import ProblemError
from tests.support import ApiUser, create_task, new_user, serving_client, settings_for

PROBLEM = "application/problem+json"
# Every byte RFC 9110 allows inside an entity-tag's quotes: %x21 / %x23-7E / obs-text.
_ETAGC = "".join(chr(c) for c in (0x21, *range(0x23, 0x7F), *range(0x80, 0x100)))
# Whatever a header value may carry on the wire (no control characters but tab).
_FIELD_CHARS = "\t" + "".join(chr(c) for c in (*range(0x20, 0x7F), *range(0x80, 0x100)))


@pytest.fixture(scope="module")
def unlimited(api_db_url: str) -> Iterator[httpx.Client]:
    """An API without the per-user rate limit: one user sends hundreds of requests here."""
    app = create_app(settings_for(api_db_url, rate_limit_per_minute=0))
    with serving_client(app) as client:
        yield client


@pytest.fixture(scope="module")
def carol() -> ApiUser:
    return new_user()


def _row(api_db: psycopg.Connection[Any], task_id: int) -> tuple[Any, ...] | None:
    return api_db.execute("select title, completed, version from tasks where id = %s", [task_id]).fetchone()


def _problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == PROBLEM, response.text
    return str(response.json()["type"]).rpartition(":")[2]


def _versions_no_task_can_have(task_id: int) -> list[str]:
    return [
        f'"{task_id}.2147483648"',
        f'"{task_id}.9223372036854775808"',
        f'"{task_id}.{"9" * 5000}"',
        f'"{task_id}.{"1" * 5000}", "{task_id}.0"',
        f'"{task_id}.01"',
    ]


@pytest.mark.parametrize("case", range(5))
def test_if_match_naming_a_version_the_task_cannot_have_is_412_and_changes_nothing(
    unlimited: httpx.Client, carol: ApiUser, api_db: psycopg.Connection[Any], case: int
) -> None:
    task, current = create_task(unlimited, carol, title="kept")
    task_id = task["id"]
    url = carol.task_url(task_id)
    headers = {**carol.headers, "If-Match": _versions_no_task_can_have(task_id)[case]}
    for response in (
        unlimited.put(url, json={"title": "overwritten"}, headers=headers),
        unlimited.patch(f"{url}/complete", headers=headers),
        unlimited.patch(f"{url}/complete", json={"completed": True}, headers=headers),
        unlimited.delete(url, headers=headers),
    ):
        assert response.status_code == 412, response.text
        assert _problem_type(response) == "precondition-failed"
        assert response.headers["etag"] == current
    assert _row(api_db, task_id) == ("kept", False, 1)


@pytest.mark.parametrize("case", range(5))
def test_if_none_match_naming_a_version_the_task_cannot_have_reads_the_task(
    unlimited: httpx.Client, carol: ApiUser, case: int
) -> None:
    task, current = create_task(unlimited, carol, title="kept")
    task_id = task["id"]
    headers = {**carol.headers, "If-None-Match": _versions_no_task_can_have(task_id)[case]}
    response = unlimited.get(carol.task_url(task_id), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "kept"
    assert response.headers["etag"] == current


def test_a_malformed_if_none_match_is_422_whatever_if_match_would_decide(
    unlimited: httpx.Client, carol: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    """If-Match was decided first, so an If-Match naming another version answered a malformed
    If-None-Match with 412, on one task's GET and on the list's GET and POST: a client read it as a
    precondition, not as a field to fix."""
    task, _ = create_task(unlimited, carol, title="kept")
    task_id = task["id"]
    headers = {**carol.headers, "If-Match": '"0.0"', "If-None-Match": "H8]'"}
    for response in (
        unlimited.get(carol.task_url(task_id), headers=headers),
        unlimited.get(carol.tasks_url, headers=headers),
        unlimited.post(carol.tasks_url, json={"title": "not made"}, headers=headers),
    ):
        assert response.status_code == 422, response.text
        assert _problem_type(response) == "validation-error"
        assert [error["field"] for error in response.json()["errors"]] == ["header.if-none-match"]
    titles = api_db.execute("select title from tasks where user_id = %s", [carol.id]).fetchall()
    assert ("not made",) not in titles


@st.composite
def _opaque_tag(draw: st.DrawFn, task_id: int) -> str:
    """What goes between an entity-tag's quotes: this task's tag, near misses, and anything."""
    this = str(task_id)
    opaque: str = draw(
        st.one_of(
            st.just(f"{this}.1"),
            st.integers(min_value=-1, max_value=2**70).map(lambda version: f"{this}.{version}"),
            st.integers(min_value=11, max_value=4500).map(lambda digits: f"{this}.{'9' * digits}"),
            st.integers(min_value=0, max_value=3).map(lambda zeros: f"{this}.{'0' * zeros}1"),
            st.integers(min_value=0, max_value=2**64).map(lambda other: f"{other}.1"),
            st.text(alphabet=_ETAGC, max_size=30),
        )
    )
    return opaque


@st.composite
def _entity_tag(draw: st.DrawFn, task_id: int) -> tuple[str, str, bool]:
    opaque, weak = draw(_opaque_tag(task_id)), draw(st.booleans())
    return ('W/"' if weak else '"') + opaque + '"', opaque, weak


_OWS = st.text(alphabet=" \t", max_size=2)


@st.composite
def _tag_list(draw: st.DrawFn, task_id: int) -> tuple[str, list[tuple[str, bool]]]:
    """A well-formed field value, and its tags as (opaque, weak)."""
    tags = draw(st.lists(_entity_tag(task_id), min_size=1, max_size=3))
    value = tags[0][0]
    for text, _, _ in tags[1:]:
        value += draw(_OWS) + "," + draw(_OWS) + text
    return value, [(opaque, weak) for _, opaque, weak in tags]


def _junk(task_id: int) -> st.SearchStrategy[str]:
    """Field values a careless or hostile client sends: anything, and mangled entity-tag lists."""
    mangled = st.tuples(_tag_list(task_id), st.text(alphabet=_FIELD_CHARS, max_size=5), st.integers(0, 40))
    return st.one_of(
        st.text(alphabet=_FIELD_CHARS, max_size=60),
        mangled.map(lambda cut: cut[0][0][: cut[2]] + cut[1] + cut[0][0][cut[2] :]),
        st.sampled_from(["*", " * ", "*, *", '*, "1.1"', "W/*", "W/", '""', 'W/""', ",", ", ,"]),
    )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_conditional_headers_never_answer_500_on_get_put_patch_or_delete(
    unlimited: httpx.Client, carol: ApiUser, data: st.DataObject
) -> None:
    task, current = create_task(unlimited, carol, title="kept")
    task_id = task["id"]
    url = carol.task_url(task_id)
    well_formed = data.draw(st.booleans(), label="well formed")
    if well_formed:
        value, tags = data.draw(_tag_list(task_id), label="field")
    else:
        # A client's HTTP library strips the whitespace around a field value (h11 refuses it).
        value, tags = data.draw(_junk(task_id), label="field").strip(" \t"), []
    opaque = current.strip('"')
    strong_match = any(tag == opaque and not weak for tag, weak in tags)
    weak_match = any(tag == opaque for tag, _ in tags)

    def sent(field: str) -> dict[str, Any]:
        return {**carol.headers, field: value.encode("latin-1")}

    # None of these changes the task when allowed (same title, not completed): each sees version 1.
    answers = {
        "GET": unlimited.get(url, headers=sent("If-None-Match")),
        "PUT": unlimited.put(url, json={"title": "kept"}, headers=sent("If-Match")),
        "PATCH": unlimited.patch(f"{url}/complete", json={"completed": False}, headers=sent("If-Match")),
        "DELETE": unlimited.delete(url, headers=sent("If-Match")),
    }
    for method, response in answers.items():
        assert response.status_code < 500, (method, value, response.text)
        if response.status_code >= 400:
            assert _problem_type(response) in {"precondition-failed", "validation-error"}, (method, value)
    if well_formed:
        assert answers["GET"].status_code == (304 if weak_match else 200), value
        expected = (200, 200, 204) if strong_match else (412, 412, 412)
        assert tuple(answers[m].status_code for m in ("PUT", "PATCH", "DELETE")) == expected, value


@cache
def _documented_patterns() -> frozenset[str]:
    """The `pattern` of every If-Match and If-None-Match parameter the document declares."""
    patterns = set()
    for path_item in openapi_document()["paths"].values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "header" and parameter["name"] in ("If-Match", "If-None-Match"):
                    assert "pattern" in parameter["schema"], (parameter["name"], operation["operationId"])
                    patterns.add(parameter["schema"]["pattern"])
    return frozenset(patterns)


def _parser_accepts(value: str) -> bool:
    try:
        entity_tags(value, "If-Match")
    except ProblemError:
        return False
    return True


# The characters the grammar turns on, and near misses: NBSP and NEL (white space to Python's
# str.strip and `\s`, not OWS), DEL and the characters around the quoted ranges, a lowercase w.
_GRAMMAR_PIECES = [" ", "\t", ",", "*", "W/", "W", "w/", "/", '"', "a", "1.1", "!", "#", "~"]
_GRAMMAR_PIECES += ["\x7f", "\x80", "\xa0", "\x85", "\xff", "\x00", "\n", "\r", "\x0b", "\u0100"]


@settings(max_examples=1000, deadline=None)
@given(
    value=st.one_of(
        _tag_list(7).map(lambda listed: listed[0]),
        _junk(7),
        st.lists(st.sampled_from(_GRAMMAR_PIECES), max_size=12).map("".join),
        st.text(max_size=20),
    )
)
# What schemathesis sent as a string the document then allowed, and the parser refused.
@example(value="")
@example(value="x")
@example(value=",")
@example(value="W/*")
def test_the_document_admits_exactly_the_conditional_fields_the_parser_accepts(value: str) -> None:
    """A client that checks If-Match or If-None-Match against the document is refused nothing else
    as malformed (a 422): each parameter's `pattern`, anchored, is ECMA-262 syntax that Python's re
    reads alike, and JSON Schema matches it anywhere, which an anchored pattern makes a fullmatch."""
    patterns = _documented_patterns()
    assert patterns, "the document declares no If-Match or If-None-Match pattern"
    for pattern in patterns:
        assert (re.fullmatch(pattern, value) is not None) == _parser_accepts(value), (pattern, value)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("*", True),
        (" * ", True),
        ('"1.1"', True),
        ('W/"1.1"', True),
        ('""', True),
        (', "1.1" ,, W/"1.2" ,', True),
        ('"1.1" "1.2"', False),
        ("*, *", False),
        ('*, "1.1"', False),
        ("W/*", False),
        ("", False),
        (",", False),
        ("x", False),
        ('w/"1.1"', False),
        # OWS is space and tab (RFC 9110, section 5.6.3); NBSP is obs-text, allowed only inside quotes.
        ("\xa0*", False),
        ('"1.1"\xa0', False),
        ('"\xa0"', True),
    ],
)
def test_conditional_field_grammar(value: str, accepted: bool) -> None:
    assert _parser_accepts(value) is accepted
    assert {re.fullmatch(pattern, value) is not None for pattern in _documented_patterns()} == {accepted}
