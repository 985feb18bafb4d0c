"""How the refusals of the HTTP layer are documented: what `AuthenticatedRoute` answers before a
handler runs (401, 403, 415, 429, 503, and FastAPI's 422), with the headers they carry and the
problem types each can be, and the 431 the server answers before the API runs.

`AuthenticatedRoute` merges these into every operation it serves, so a router with
`route_class=AuthenticatedRoute` documents them without naming them; an operation that refuses
more for a reason of its own (the event stream's caps) passes its own 429 or 503, built with
`too_many_requests_doc` and `service_unavailable_doc`, and that one is documented instead.
"""

from typing import Any

from api.http.openapi import OpenApiDocument, response_header
from api.http.problems import ProblemType, error_response

Responses = dict[int | str, dict[str, Any]]
Headers = dict[str, dict[str, Any]]


def retry_after(
    description: str = "Seconds to wait before trying again.", *, required: bool = False
) -> Headers:
    """The `headers` entry for Retry-After; `required` where every answer of that status sends it."""
    header = response_header(description, "integer")
    return {"Retry-After": {**header, "required": True} if required else header}


# For a status only some of whose answers send it (a create's 409); every 429 and 503 of an
# authenticated operation sends it, so theirs is required.
RETRY_AFTER = retry_after()
# Sent only with the 429 of RATE_LIMIT_PER_MINUTE (api/http/rate_limit.py); every other 429 has
# Retry-After alone.
RATE_LIMIT = {
    "RateLimit-Policy": response_header(
        "Past RATE_LIMIT_PER_MINUTE only: the rate limit, as the IETF draft spells it: "
        '`"per-user";q=600;w=60`.'
    ),
    "RateLimit": response_header(
        'Past RATE_LIMIT_PER_MINUTE only: what is left of it: `"per-user";r=0;t=<seconds until a request '
        "may be made>`."
    ),
}


def too_many_requests_doc(own_reason: str = "") -> dict[str, Any]:
    """The 429 of every authenticated operation, with the reason an operation has of its own first."""
    return error_response(
        f"Too many requests from you: {own_reason + ', ' if own_reason else ''}past "
        "MAX_REQUESTS_IN_FLIGHT_PER_USER requests in flight, past your share of the database's "
        "connections, or past RATE_LIMIT_PER_MINUTE (then with the rate-limit fields). Nothing was done.",
        types=[ProblemType.TOO_MANY_REQUESTS],
        headers={**retry_after(required=True), **RATE_LIMIT},
    )


def service_unavailable_doc(
    own_reason: str = "", own_type: ProblemType | None = None, *, writes: bool = True
) -> dict[str, Any]:
    """The 503 of every authenticated operation, with the reason and problem type an operation has
    of its own; outcome-unknown only where the operation may write (a read's broken connection is
    retried, or database-unavailable: api/db/database.py)."""
    types = [
        ProblemType.DATABASE_UNAVAILABLE,
        ProblemType.STATEMENT_TIMEOUT,
        ProblemType.AUTHENTICATION_UNAVAILABLE,
        ProblemType.ISOLATION_UNVERIFIED,
    ]
    types += [own_type] if own_type else []
    # Each cause of database-unavailable, as README.md lists them and docs/operations.md ("What each
    # database error is answered with") maps them from Postgres's errors: a client that reads the
    # document alone could not tell a busy pool or a standby from a bug.
    database = (
        "the database cannot be reached, or is busy (no connection came free within "
        "DB_POOL_TIMEOUT_SECONDS), gave up waiting for a lock within its lock_timeout, "
        + ("refused a write for being read-only (a standby), " if writes else "")
        + "ran out of a resource (disk, memory), failed with an error of its own, or rolled the request "
        f"back twice to end a conflict with other transactions (type {ProblemType.DATABASE_UNAVAILABLE.urn})"
    )
    causes = [
        database[0].upper() + database[1:],
        "the database did not finish the request within DB_STATEMENT_TIMEOUT_MS: a search over many "
        "long tasks costs as much each time, narrow it (type "
        f"{ProblemType.STATEMENT_TIMEOUT.urn})",
        f"Better Auth's keys cannot be fetched (type {ProblemType.AUTHENTICATION_UNAVAILABLE.urn})",
        f"the last isolation check found something (type {ProblemType.ISOLATION_UNVERIFIED.urn})",
    ]
    causes += [own_reason] if own_reason else []
    text = (
        f"{'; '.join(causes[:-1])}; or {causes[-1]}. Retry after the `Retry-After` seconds. Nothing was done"
    )
    if writes:
        types.append(ProblemType.OUTCOME_UNKNOWN)
        text += (
            f", except for type {ProblemType.OUTCOME_UNKNOWN.urn}: the database stopped answering, "
            "or failed, after the change was sent, so it may have been made; retry with the same "
            "Idempotency-Key, or read the task before changing it again"
        )
    return error_response(text + ".", types=types, headers=retry_after(required=True))


def invalid_request_doc(*own_types: ProblemType) -> dict[str, Any]:
    """The 422 of every authenticated operation, with the types an operation has of its own."""
    return error_response(
        "Invalid input: each bad field is listed in `errors` (`body`, naming the constraint, for a "
        "write a CHECK constraint of the database refuses); nothing was changed.",
        types=[ProblemType.VALIDATION_ERROR, *own_types],
    )


AUTH_ERRORS: Responses = {
    401: error_response(
        "Missing, malformed, badly signed, expired or not-yet-valid token, or one whose `sub` cannot be "
        "a path segment.",
        types=[ProblemType.UNAUTHORIZED],
        headers={
            "WWW-Authenticate": {
                **response_header(
                    '`Bearer` when no token was sent; `Bearer error="invalid_token"` when the one sent '
                    "was refused, and a fresh one may do (RFC 6750)."
                ),
                "required": True,
            }
        },
    ),
    403: error_response("The user id in the path is not the token's subject.", types=[ProblemType.FORBIDDEN]),
    422: invalid_request_doc(),
    429: too_many_requests_doc(),
}
# Added by method: only a write can have an outcome unknown (GET and HEAD only read).
UNAVAILABLE_TO_READS: Responses = {503: service_unavailable_doc(writes=False)}
UNAVAILABLE_TO_WRITES: Responses = {503: service_unavailable_doc(writes=True)}
# Refused only where a body may come (POST, PUT, PATCH): api/http/caller.py.
NOT_JSON: Responses = {
    415: error_response(
        "A body sent as anything but uncompressed application/json: one sent as another type is "
        "answered with `Accept: application/json`, a compressed one with `Accept-Encoding: identity`.",
        types=[ProblemType.UNSUPPORTED_MEDIA_TYPE],
        headers={
            "Accept": response_header(
                "`application/json`, when the body was sent as another type, or with no or several "
                "Content-Types: send it as that (RFC 9110, section 15.5.16)."
            ),
            "Accept-Encoding": response_header(
                "`identity`, when the body was sent with a Content-Encoding: send it uncompressed (RFC 7694)."
            ),
        },
    )
}


# granian's own answer under `todo-api serve`, on any path and before the app runs (api/ops/server.py
# has the limits): no problem document and no X-Request-ID.
HEAD_TOO_LARGE = {
    "description": "The request head is larger, or has more header fields, than the server takes (the "
    "README's threat model has the limits). Under `todo-api serve` the server refuses it itself before "
    "the API runs: no body and no X-Request-ID, and the connection is closed. Nothing was done."
}


def document_head_too_large(document: OpenApiDocument) -> None:
    """Declares the server's 431 on every operation. Amend after the header every response carries:
    this answer carries none of the API's."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        operation["responses"]["431"] = dict(HEAD_TOO_LARGE)
