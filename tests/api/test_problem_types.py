"""Problem types have one home, `ProblemType` (api/http/problems.py): every type the OpenAPI document
or the docs name is one the server can send, and README.md lists every one of them."""

import json
import re
from pathlib import Path

from api.app import openapi_document
from api.http.problems import ProblemType
from tests.support import listed_types

PROJECT = Path(__file__).resolve().parents[2]
_URN = re.compile(r"urn:todo-api:problem:[a-z]+(?:-[a-z]+)*")
SENDABLE = {problem.urn for problem in ProblemType}
STATUS_OF = {problem.urn: problem.status for problem in ProblemType}


def test_every_type_the_openapi_document_names_is_one_the_server_sends() -> None:
    named = set(_URN.findall(json.dumps(openapi_document())))
    assert named, "the search found no type at all"
    assert named <= SENDABLE


def test_every_type_the_docs_name_is_one_the_server_sends() -> None:
    for page in sorted((PROJECT / "docs").glob("*.md")):
        assert set(_URN.findall(page.read_text(encoding="utf-8"))) <= SENDABLE, page.name


def test_readme_lists_exactly_the_types_the_server_sends() -> None:
    named = set(_URN.findall((PROJECT / "README.md").read_text(encoding="utf-8")))
    assert named == SENDABLE


def test_every_error_response_lists_its_types_and_its_words_name_exactly_those() -> None:
    """A client switches on the `enum` of a problem's `type` (schema.ts makes it a union); a person
    reads the description: the two say the same, and every answer with a body lists some, each one
    the server sends with that answer's status."""
    for path, path_item in openapi_document()["paths"].items():
        for method, operation in path_item.items():
            for status, response in operation["responses"].items():
                where = f"{method.upper()} {path} {status}"
                if status[0] not in "45" or "content" not in response:
                    continue
                assert set(response["content"]) == {"application/problem+json"}, where
                listed = listed_types(response)
                assert listed, where
                assert set(listed) <= SENDABLE, where
                assert set(_URN.findall(response["description"])) == set(listed), where
                assert {STATUS_OF[urn] for urn in listed} == {int(status)}, where
