"""How the task endpoints are documented: every parameter, header and response a client can meet.

The OpenAPI document is the frontend's contract (clients/typescript/ is generated from it), so each
request header an operation reads is a header parameter, and each response header it sends is
documented on the responses that carry it. `tests/api/test_openapi.py` holds the two together.
"""

from typing import Any

from api.http.problems import error_response
from api.tasks.models import IDEMPOTENCY_KEY_MAX_LENGTH

Responses = dict[int | str, dict[str, Any]]


def _header(description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": schema_type}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again.", "integer")}
# Sent only with the 429 of RATE_LIMIT_PER_MINUTE (api/http/rate_limit.py); every other 429 has
# Retry-After alone.
RATE_LIMIT = {
    "RateLimit-Policy": _header(
        "Past RATE_LIMIT_PER_MINUTE only: the rate limit, as the IETF draft spells it: "
        '`"per-user";q=600;w=60`.'
    ),
    "RateLimit": _header(
        'Past RATE_LIMIT_PER_MINUTE only: what is left of it: `"per-user";r=0;t=<seconds until a request '
        "may be made>`."
    ),
}
ETAG = {
    "ETag": _header("The task's version, a strong entity-tag: send it back in If-Match or If-None-Match.")
}
LOCATION = {"Location": _header("The new task's URL.")}
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_REPLAYED = {
    REPLAYED_HEADER: _header(
        "`true` when this answers a repeated Idempotency-Key: nothing was created now. A first answer "
        "has no such header."
    )
}
LINK = {
    "Link": _header('`<url>; rel="next"` when more tasks match than `limit`: the next page, with its cursor.')
}

IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": (
        "The ETag (or a list, or `*`) of the version you are changing: the write happens only if the "
        "task is still that version, else 412 and nothing changes. Required (428 without it) when the "
        "server runs with REQUIRE_IF_MATCH=true."
    ),
    "schema": {"type": "string"},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag you hold: 304 with no body when the task is still that version.",
    "schema": {"type": "string"},
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
        "create: a retry with the same key and body within IDEMPOTENCY_TTL_HOURS creates nothing "
        "and gets 201 with that task as it is now; the same key with another body gets 422 "
        "idempotency-key-reused; once the task is deleted, the key gets 410 task-deleted, whatever "
        "the body; while other requests with the key are being handled, 409 idempotency-key-in-use "
        "may ask you to send the request again after Retry-After. One header field: two are a 422."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
        "pattern": "^[!-~]+$",
    },
}


def operation_docs(*, headers: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """`openapi_extra` for an operation: the request headers it reads."""
    return {"parameters": list(headers)}


def too_many_requests(own_reason: str = "") -> dict[str, Any]:
    """The 429 of every authenticated operation, with the reason an operation has of its own first."""
    return error_response(
        f"Too many requests from you: {own_reason + ', ' if own_reason else ''}past "
        "MAX_REQUESTS_IN_FLIGHT_PER_USER requests in flight, past your share of the database's "
        "connections, or past RATE_LIMIT_PER_MINUTE (then with the rate-limit fields). Nothing was done.",
        headers={**RETRY_AFTER, **RATE_LIMIT},
    )


def service_unavailable(own_reason: str = "", own_type: str = "", *, writes: bool = True) -> dict[str, Any]:
    """The 503 of every authenticated operation, with the reason and problem type an operation has
    of its own; outcome-unknown only where the operation may write."""
    types = ["database-unavailable", "authentication-unavailable", "isolation-unverified"]
    types += [own_type] if own_type else []
    causes = [
        "The database, or Better Auth's keys, cannot be reached",
        "the last isolation check found something",
    ]
    causes += [own_reason] if own_reason else []
    text = (
        f"{', '.join(causes[:-1])}, or {causes[-1]}; retry after the `Retry-After` seconds. "
        f"Nothing was done (type urn:todo-api:problem:{', '.join(types[:-1])} or {types[-1]})"
    )
    if writes:
        text += (
            ", except for type urn:todo-api:problem:outcome-unknown (writes only): the database "
            "stopped answering after the change was sent, so it may have been made; retry with the "
            "same Idempotency-Key, or read the task before changing it again"
        )
    return error_response(text + ".", headers=RETRY_AFTER)


AUTH_ERRORS: Responses = {
    401: error_response(
        "Missing, malformed, badly signed, expired or not-yet-valid token (type "
        "urn:todo-api:problem:unauthorized).",
        headers={
            "WWW-Authenticate": {
                **_header(
                    '`Bearer` when no token was sent; `Bearer error="invalid_token"` when the one sent '
                    "was refused, and a fresh one may do (RFC 6750)."
                ),
                "required": True,
            }
        },
    ),
    403: error_response("The user id in the path is not the token's subject."),
    422: error_response("Invalid input: each bad field is listed in `errors`."),
    429: too_many_requests(),
    503: service_unavailable(),
}
NOT_FOUND: Responses = {404: error_response("No such task, or it belongs to someone else.")}
NOT_JSON: Responses = {
    415: error_response(
        "A body sent as anything but uncompressed application/json (type "
        "urn:todo-api:problem:unsupported-media-type); a compressed one is answered with "
        "`Accept-Encoding: identity`.",
        headers={
            "Accept-Encoding": _header(
                "`identity`, when the body was sent with a Content-Encoding: send it uncompressed (RFC 7694)."
            )
        },
    )
}
READ_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names another version of the task. The ETag is the current one.", headers=ETAG
    ),
}
LIST_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names entity-tags, none of which the task list has, or, on a create, If-None-Match "
        "is `*`: nothing was done. No ETag."
    ),
}
WRITE_CONDITIONS: Responses = {
    412: error_response(
        "If-Match names another version of the task, or If-None-Match is `*` or names the current "
        "one: nothing changed. The ETag is the current one.",
        headers=ETAG,
    ),
    428: error_response("If-Match is required (REQUIRE_IF_MATCH) and was not sent."),
}
