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

# An entity-tag: optional W/, then characters %x21 / %x23-7E / obs-text in double quotes; empty list
# elements before it are skipped (RFC 9110, section 5.6.1.2: recipients accept and ignore them).
_ENTITY_TAG = re.compile(r'[\s,]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
# What may follow the last tag: more empty elements.
_EMPTY_ELEMENTS = re.compile(r"[\s,]*")

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
    if value.strip() == ANY:
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
