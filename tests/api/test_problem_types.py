"""Problem types have one home, `ProblemType` (api/http/problems.py): every type the OpenAPI document
or the docs name is one the server can send, and README.md lists every one of them."""

import json
import re
from pathlib import Path

from api.app import openapi_document
from api.http.problems import ProblemType

PROJECT = Path(__file__).resolve().parents[2]
# A list in a description ("urn:todo-api:problem:a, b or c") names its first type in full: the
# others are built from `ProblemType` too (api/http/refusals.py), and are not re-read here.
_URN = re.compile(r"urn:todo-api:problem:[a-z]+(?:-[a-z]+)*")
SENDABLE = {problem.urn for problem in ProblemType}


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
