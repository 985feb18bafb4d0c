"""A task's ETag, and what If-Match and If-None-Match name, in terms of the task's version; and what
they mean for the task list, which has no ETag.

The ETag is `"<task id>.<version>"`. The version moves exactly when the task's content does
(sql/migrations/0005_versions_and_idempotency.sql), so the ETag is strong, costs no hashing, and
can be tested by the database in the very statement that writes: `version = ANY(...)`. The id
keeps a tag copied from one task from matching another.
"""

from typing import Literal

from fastapi import Request

from api.http.conditional import ANY, EntityTag, entity_tags, field_value, quoted
from api.http.problems import list_precondition_failed, precondition_required
from api.settings import POSTGRES_INT_MAX


def etag(task_id: int, version: int) -> str:
    return quoted(f"{task_id}.{version}")


# `tasks.version` is a Postgres `integer`: a tag naming a larger version names no version the task
# can have, and must not reach the statement (which would fail on the cast) or int() (which refuses
# numbers of thousands of digits).
MAX_VERSION = POSTGRES_INT_MAX
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))


def _version(opaque: str, task_id: int) -> int | None:
    """The version a tag names for this task, or None when it names none the task can have.

    Tags compare as strings (RFC 9110): only the spelling `etag` gives can match, so a version with
    a leading zero (`"7.01"`) names nothing either.
    """
    named_id, _, version = opaque.partition(".")
    if (
        named_id != str(task_id)
        or not (version.isascii() and version.isdigit())
        or len(version) > _MAX_VERSION_DIGITS
        or version.startswith("0")
    ):
        return None
    number = int(version)
    return number if number <= MAX_VERSION else None


def if_match_versions(request: Request, task_id: int, *, required: bool) -> list[int] | None:
    """The versions If-Match accepts; None when any will do (no If-Match, or `*`).

    A weak tag never matches (RFC 9110 compares If-Match strongly). Without If-Match, `required`
    (REQUIRE_IF_MATCH) refuses the write with 428.
    """
    header = field_value(request.headers, "if-match")
    if header is None:
        if required:
            raise precondition_required()
        return None
    tags = entity_tags(header, "if-match")
    if tags == ANY:
        return None
    return [
        version for tag in tags if not tag.weak and (version := _version(tag.opaque, task_id)) is not None
    ]


def if_none_match_tags(request: Request) -> list[EntityTag] | Literal["*"] | None:
    """What If-None-Match names (None when it was not sent); 422 when it is malformed. Read before
    If-Match is decided, whose 412 would otherwise answer a request with a malformed field."""
    header = field_value(request.headers, "if-none-match")
    return None if header is None else entity_tags(header, "if-none-match")


def named_versions(tags: list[EntityTag], task_id: int) -> list[int]:
    """The versions of this task If-None-Match's `tags` name (compared weakly)."""
    return [version for tag in tags if (version := _version(tag.opaque, task_id)) is not None]


def names_version(tags: list[EntityTag] | Literal["*"] | None, task_id: int, version: int) -> bool:
    """Whether If-None-Match's `tags` name this version of the task (compared weakly), or are `*`."""
    if tags is None:
        return False
    return tags == ANY or any(_version(tag.opaque, task_id) == version for tag in tags)


def list_preconditions_hold(request: Request) -> bool:
    """Whether If-Match and If-None-Match hold on the task list, a resource that exists and has no
    entity-tag (RFC 9110, sections 13.1.1, 13.1.2 and 13.2.2). If-Match holds only as `*`; when it
    does not, the request fails here with 412, whatever its method. If-None-Match does not hold only
    as `*`: then this returns False, and a read answers 304, a create 412. Both are read first: a
    malformed one is a 422 whatever the other says."""
    if_match = field_value(request.headers, "if-match")
    match_tags = None if if_match is None else entity_tags(if_match, "if-match")
    none_match_tags = if_none_match_tags(request)
    if match_tags is not None and match_tags != ANY:
        raise list_precondition_failed("If-Match")
    return none_match_tags != ANY
