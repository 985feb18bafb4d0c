"""Conditional requests (RFC 9110, section 13): the entity-tags of If-Match and If-None-Match.

A field is `*` or a comma-separated list of entity-tags, `"opaque"` or `W/"opaque"`. If-Match
compares strongly (a weak tag never matches); If-None-Match weakly (W/ is ignored). What a tag
means is the resource's business (api/tasks/routes.py); this module only reads the field.
"""

import re
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import Headers

from api.http.problems import invalid_input

# RFC 9110's grammar in pieces, each written once, in syntax Python's re and ECMA-262 (the document's
# patterns) read alike. OWS is space and tab only (section 5.6.3); not `\s`, which in Python also
# takes NBSP and NEL, octets a field may carry only as obs-text, inside a tag's quotes.
_OWS = r"[ \t]*"
# Empty list elements, which recipients accept and ignore (section 5.6.1.2).
_EMPTY = r"[ \t,]*"
# What goes between an entity-tag's quotes: %x21 / %x23-7E / obs-text.
_OPAQUE = r"[\x21\x23-\x7e\x80-\xff]*"

# One element: empty ones before it, an optional W/, the quoted tag, and the comma (or the end of the
# field) that ends it.
_ENTITY_TAG = re.compile(rf'{_EMPTY}(W/)?"({_OPAQUE})"{_OWS}(?:,|\Z)')
# What may follow the last tag: more empty elements.
_EMPTY_ELEMENTS = re.compile(_EMPTY)

# Exactly the values `entity_tags` accepts, for the document's If-Match and If-None-Match parameters
# (tests/api/test_conditional_header_grammar.py holds the two together): `*`, or entity-tags with a
# comma between each two and empty elements anywhere. Each character has one place to go, so a
# client's backtracking engine stays linear on any value.
_ANY_TAG = rf'(?:W/)?"{_OPAQUE}"'
FIELD_PATTERN = rf"^(?:{_OWS}\*{_OWS}|{_EMPTY}{_ANY_TAG}{_OWS}(?:,{_OWS}(?:{_ANY_TAG}{_OWS})?)*)$"

ANY: Literal["*"] = "*"


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str
    weak: bool


def field_value(headers: Headers, field: str) -> str | None:
    """The field as one list: a field sent on several lines is their values in order, joined with
    commas (RFC 9110, section 5.3), not only its first line. None when it was not sent."""
    lines = headers.getlist(field)
    return ", ".join(lines) if lines else None


def entity_tags(value: str, field: str) -> list[EntityTag] | Literal["*"]:
    """The tags of an If-Match or If-None-Match field; 422 naming `field` when it is malformed."""
    if value.strip(" \t") == ANY:
        return ANY
    tags, position = [], 0
    while position < len(value):
        found = _ENTITY_TAG.match(value, position)
        if found is None or found.end() == position:
            break
        tags.append(EntityTag(found.group(2), weak=found.group(1) is not None))
        position = found.end()
    if not tags or _EMPTY_ELEMENTS.fullmatch(value, position) is None:
        raise invalid_input(
            f"header.{field}", 'Send "*" or entity-tags such as "12.3", as an ETag gave them.'
        )
    return tags


def quoted(opaque: str) -> str:
    """A strong entity-tag, as the ETag field carries it."""
    return f'"{opaque}"'
