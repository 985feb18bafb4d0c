"""How the task endpoints are documented: every parameter, header and response a client can meet.

The OpenAPI document is the frontend's contract (clients/typescript/ is generated from it), so each
request header an operation reads is a header parameter, and each response header it sends is
documented on the responses that carry it. `tests/api/test_openapi.py` holds the two together.
"""

from typing import Any

from api.http.conditional import FIELD_PATTERN
from api.http.openapi import response_header
from api.http.problems import ProblemType, error_response
from api.http.refusals import Responses
from api.tasks.models import IDEMPOTENCY_KEY_MAX_LENGTH

# Required: every answer of a status they are documented on sends them (api/tasks/routes.py), so a
# typed client may rely on them; tests/api/test_openapi.py holds the answers to the document.
ETAG = {
    "ETag": {
        **response_header(
            "The task's version, a strong entity-tag: send it back in If-Match or If-None-Match."
        ),
        "required": True,
    }
}
LOCATION = {"Location": {**response_header("The new task's URL."), "required": True}}
# RFC 9110, section 8.7: the body (and its ETag) is the task at this URL, not the request's target.
CONTENT_LOCATION = {
    "Content-Location": {
        **response_header("The task's URL: the body, and its ETag, are the task as GET returns it there."),
        "required": True,
    }
}
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_REPLAYED = {
    REPLAYED_HEADER: response_header(
        "`true` when this answers a repeated Idempotency-Key: nothing was created now. A first answer "
        "has no such header."
    )
}
LINK = {
    "Link": response_header(
        '`<url>; rel="next"` when more tasks match than `limit`: the next page, with its cursor.'
    )
}

# What the parser accepts, so that a value the document admits is never the 422 of a malformed field.
CONDITIONAL_FIELD = {"type": "string", "pattern": FIELD_PATTERN}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": (
        "The ETag (or a list, or `*`) of the version you are changing: the write happens only if the "
        "task is still that version, else 412 and nothing changes. Required (428 without it) when the "
        "server runs with REQUIRE_IF_MATCH=true."
    ),
    "schema": CONDITIONAL_FIELD,
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag you hold: 304 with no body when the task is still that version.",
    "schema": CONDITIONAL_FIELD,
}
# The same two headers on the other side (RFC 9110, section 13.1): rarely sent, always evaluated.
IF_MATCH_ON_READ = {
    **IF_MATCH,
    "description": "An ETag (or a list, or `*`): 412 with the current ETag unless the task is that version.",
}
IF_NONE_MATCH_ON_WRITE = {
    **IF_NONE_MATCH,
    "description": (
        "`*`, or ETags: 412 with the current ETag, and nothing changes, when it is `*` or names the "
        "task's current version."
    ),
}
# The task list has no ETag (RFC 9110, section 13.1): no entity-tag names it, and it always exists.
IF_MATCH_ON_LIST = {
    **IF_MATCH,
    "description": (
        "The task list has no ETag: `*` lets the request through, and entity-tags fail it with 412 "
        "(nothing is created)."
    ),
}
IF_NONE_MATCH_ON_LIST = {
    **IF_NONE_MATCH,
    "description": (
        "`*`: the task list exists, so a list request gets 304 with no body, and a create 412 "
        "(nothing is created). Entity-tags never match it."
    ),
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        f"1 to {IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters (a UUID, say) naming this "
        'create, sent bare or in double quotes as the IETF draft writes it ("K" is the key K): '
        "a retry with the same key and body within IDEMPOTENCY_TTL_HOURS creates nothing "
        "and gets 201 with that task as it is now; the same key with another body gets 422 "
        f"{ProblemType.IDEMPOTENCY_KEY_REUSED}; once the task is deleted, the key gets 410 "
        f"{ProblemType.TASK_DELETED}, whatever the body; while other requests with the key are being "
        f"handled, 409 {ProblemType.IDEMPOTENCY_KEY_IN_USE} "
        "may ask you to send the request again after Retry-After. One header field: two are a 422."
    ),
    # Exactly what api/tasks/idempotency.py takes: the key bare, or in one pair of double quotes (a
    # value that starts and ends with one is read so, and `""` is an empty key); the quotes are not
    # counted in its length. tests/api/test_idempotency.py holds the two to agreeing.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH + 2,
        "pattern": (
            f'^(?:"[!-~]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}"'
            f'|(?!"[!-~]*"$)[!-~]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}})$'
        ),
    },
}


def operation_docs(*, headers: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """`openapi_extra` for an operation: the request headers it reads."""
    return {"parameters": list(headers)}


NOT_FOUND: Responses = {
    404: error_response("No such task, or it belongs to someone else.", types=[ProblemType.NOT_FOUND])
}
READ_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names another version of the task. The ETag is the current one.",
        types=[ProblemType.PRECONDITION_FAILED],
        headers=ETAG,
    ),
}
LIST_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names entity-tags, none of which the task list has, or, on a create, If-None-Match "
        "is `*`: nothing was done. No ETag.",
        types=[ProblemType.PRECONDITION_FAILED],
    ),
}
WRITE_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names another version of the task, or If-None-Match is `*` or names the current "
        "one: nothing changed. The ETag is the current one.",
        types=[ProblemType.PRECONDITION_FAILED],
        headers=ETAG,
    ),
    428: error_response(
        "If-Match is required (REQUIRE_IF_MATCH) and was not sent.", types=[ProblemType.PRECONDITION_REQUIRED]
    ),
}
