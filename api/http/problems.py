"""The one error format: RFC 9457 problem details (`application/problem+json`).

Every failure a client can cause maps to one status and one problem type; handlers never build
error bodies by hand. The layers below raise their own exceptions (InvalidToken, KeysUnavailable,
the database's UNAVAILABLE); this module alone turns them into responses.
"""

import logging
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.auth.errors import InvalidToken, KeysUnavailable
from api.db.errors import (
    UNAVAILABLE,
    AlreadyExists,
    AssignedIdTaken,
    CheckRefused,
    DatabaseBusy,
    DatabaseFault,
    IsolationBreach,
    LockWaitGivenUp,
    MissingReference,
    OutcomeUnknown,
    OutOfResources,
    SearchUnderway,
    StatementCancelled,
    TransactionConflict,
    UserShareExceeded,
    WritesRefused,
    in_one_line,
)
from api.db.isolation import IsolationUnverified, IsolationWatch
from api.http.cache_control import NO_STORE, no_store_header
from api.http.json_body import UnreadJson, shown_name
from api.http.openapi import OpenApiDocument
from api.telemetry import metrics

PROBLEM_MEDIA_TYPE = "application/problem+json"
# The one media type a request body may have (api/http/caller.py); a 415 names it in Accept.
REQUEST_MEDIA_TYPE = "application/json"
_TYPE_PREFIX = "urn:todo-api:problem:"
# The most invalid fields a 422 lists; `detail` counts the rest. Uncapped, a body of thousands of short
# unknown keys, under the body limit, was answered with a document nine times its size, and rendering
# it, not validating the body, took most of the time.
MAX_LISTED_ERRORS = 20

logger = logging.getLogger(__name__)


class ProblemType(StrEnum):
    """Every problem type the API sends: its slug (the value; `urn` is what a client switches on),
    the status it is sent with and its title.

    The one home for them: the builders below, and every OpenAPI description and README line that
    names a type, take them from here (tests/api/test_problem_types.py holds the two sides to it)."""

    status: int
    # Its `title` (`str.title` is a method of every member already).
    heading: str

    def __new__(cls, slug: str, status: int, heading: str) -> "ProblemType":
        member = str.__new__(cls, slug)
        member._value_ = slug
        member.status, member.heading = status, heading
        return member

    BAD_REQUEST = "bad-request", 400, "Bad request"
    CORS_PREFLIGHT_REFUSED = "cors-preflight-refused", 400, "CORS preflight refused"
    UNAUTHORIZED = "unauthorized", 401, "Unauthorized"
    FORBIDDEN = "forbidden", 403, "Forbidden"
    NOT_FOUND = "not-found", 404, "Not found"
    METHOD_NOT_ALLOWED = "method-not-allowed", 405, "Method not allowed"
    REQUEST_TIMEOUT = "request-timeout", 408, "Request timeout"
    IDEMPOTENCY_KEY_IN_USE = "idempotency-key-in-use", 409, "Idempotency key in use"
    TASK_LIMIT_REACHED = "task-limit-reached", 409, "Task limit reached"
    TASK_DELETED = "task-deleted", 410, "Task deleted"
    PRECONDITION_FAILED = "precondition-failed", 412, "Precondition failed"
    PAYLOAD_TOO_LARGE = "payload-too-large", 413, "Payload too large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type", 415, "Unsupported media type"
    VALIDATION_ERROR = "validation-error", 422, "Invalid request"
    IDEMPOTENCY_KEY_REUSED = "idempotency-key-reused", 422, "Idempotency key reused"
    PRECONDITION_REQUIRED = "precondition-required", 428, "Precondition required"
    TOO_MANY_REQUESTS = "too-many-requests", 429, "Too many requests"
    INTERNAL_ERROR = "internal-error", 500, "Internal server error"
    NOT_IMPLEMENTED = "not-implemented", 501, "Not implemented"
    AUTHENTICATION_UNAVAILABLE = "authentication-unavailable", 503, "Authentication unavailable"
    DATABASE_UNAVAILABLE = "database-unavailable", 503, "Database unavailable"
    STATEMENT_TIMEOUT = "statement-timeout", 503, "Statement timeout"
    ISOLATION_UNVERIFIED = "isolation-unverified", 503, "Isolation unverified"
    OUTCOME_UNKNOWN = "outcome-unknown", 503, "Outcome unknown"
    STREAMS_UNAVAILABLE = "streams-unavailable", 503, "Event streams unavailable"
    # Any other status an HTTPException carries (`http_problem`), sent with that one.
    HTTP_ERROR = "http-error", 0, "HTTP error"

    @property
    def urn(self) -> str:
        return _TYPE_PREFIX + self.value


class FieldError(BaseModel):
    field: str = Field(description="Where the bad value is, e.g. `body.title` or `query.limit`.")
    message: str


class Problem(BaseModel):
    type: str = Field(description="A URN naming the kind of problem; stable, for programs to switch on.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int
    detail: str = Field(description="What went wrong with this request, for people.")
    errors: list[FieldError] | None = Field(
        default=None,
        description=f"For 422: each invalid field, up to {MAX_LISTED_ERRORS}; `detail` says how many more.",
    )


class ProblemError(Exception):
    """Raise to answer with a problem; the handler below renders it."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(
            type=kind.urn, title=kind.heading, status=status or kind.status, detail=detail, errors=errors
        )
        self.headers = headers


# A problem answers one request at one moment: no cache may keep it. A 404 or 405 is cacheable by
# default (RFC 9111, section 4.2.2), so a CDN kept the 404 of a route a later release serves, and a
# browser one user's 404 on a shared computer; a cache told to ignore Authorization (a "cache
# everything" rule) would hand one user's 401, 403 or 503 to the next. As on every other answer of a
# task route, which makes a cache keyed by Authorization (Vary) needless.
_NOT_STORED_HEADER = no_store_header("a problem is about this request alone.")


def problem_response(error: ProblemError) -> JSONResponse:
    if error.problem.status == 503:
        metrics.unavailable.labels(error.problem.type.removeprefix(_TYPE_PREFIX)).inc()
    return JSONResponse(
        error.problem.model_dump(exclude_none=True),
        status_code=error.problem.status,
        headers={"Cache-Control": NO_STORE, **(error.headers or {})},
        media_type=PROBLEM_MEDIA_TYPE,
    )


def cors_preflight_refused(refused: str, *, headers: dict[str, str]) -> ProblemError:
    return ProblemError(
        ProblemType.CORS_PREFLIGHT_REFUSED,
        f"A browser may not make the request this preflight asks about (refused: {refused}): the API "
        "admits the origins CORS_ORIGINS names, with the methods and request headers this answer's "
        "Access-Control-Allow-Methods and Access-Control-Allow-Headers list.",
        headers=headers,
    )


def internal_error() -> ProblemError:
    return ProblemError(ProblemType.INTERNAL_ERROR, "This is a bug on our side.")


async def on_internal_error(_: Request, __: Exception) -> JSONResponse:
    """The answer to a bug: Starlette's ServerErrorMiddleware handler, installed in api/app.py."""
    return problem_response(internal_error())


def too_many_requests(
    detail: str, *, retry_after: int, headers: dict[str, str] | None = None
) -> ProblemError:
    return ProblemError(
        ProblemType.TOO_MANY_REQUESTS,
        detail,
        headers={"Retry-After": str(retry_after), **(headers or {})},
    )


def method_not_allowed(allowed: list[str]) -> ProblemError:
    listed = ", ".join(allowed)
    return ProblemError(
        ProblemType.METHOD_NOT_ALLOWED,
        f"This resource takes {listed}.",
        headers={"Allow": listed},
    )


def unsupported_media_type() -> ProblemError:
    return ProblemError(
        ProblemType.UNSUPPORTED_MEDIA_TYPE,
        "Send the body as JSON, with one Content-Type: application/json.",
        headers={"Accept": REQUEST_MEDIA_TYPE},  # RFC 9110, section 15.5.16: the types a body may have
    )


def unsupported_content_coding() -> ProblemError:
    return ProblemError(
        ProblemType.UNSUPPORTED_MEDIA_TYPE,
        "Send the body uncompressed: no Content-Encoding is accepted.",
        headers={"Accept-Encoding": "identity"},  # RFC 7694: the codings a request may use
    )


def precondition_failed(current_etag: str, *, field: str = "If-Match") -> ProblemError:
    detail = (
        "The task changed since the ETag you sent in If-Match; nothing was changed. "
        "Fetch it again, then retry with its new ETag."
        if field == "If-Match"
        else "If-None-Match names the task as it is (or is *, and the task exists); nothing was changed."
    )
    return ProblemError(ProblemType.PRECONDITION_FAILED, detail, headers={"ETag": current_etag})


def list_precondition_failed(field: str) -> ProblemError:
    """412 for the task list, which has no ETag to send back."""
    detail = (
        "The task list has no ETag, so If-Match names none it has: send * or no If-Match; nothing was done."
        if field == "If-Match"
        else "If-None-Match is *, and the task list exists; nothing was done."
    )
    return ProblemError(ProblemType.PRECONDITION_FAILED, detail)


def precondition_required() -> ProblemError:
    return ProblemError(
        ProblemType.PRECONDITION_REQUIRED,
        "Send If-Match with the task's ETag (or *), so that a change made meanwhile is not lost.",
    )


def idempotency_key_reused() -> ProblemError:
    return ProblemError(
        ProblemType.IDEMPOTENCY_KEY_REUSED,
        "This Idempotency-Key was used for a create with another body; use a new key for a new task.",
        errors=[
            FieldError(field="header.idempotency-key", message="Already used for a create with another body.")
        ],
    )


def idempotency_key_in_use() -> ProblemError:
    # The IETF Idempotency-Key draft's answer to a key whose request is still being processed: not a
    # unique key the API does not expect (`on_unexpected_unique_key`), so isolation stays trusted.
    return ProblemError(
        ProblemType.IDEMPOTENCY_KEY_IN_USE,
        "Another request with this Idempotency-Key is being handled at the same time; nothing was "
        "created. Send the same request again shortly.",
        headers={"Retry-After": "1"},
    )


def task_deleted() -> ProblemError:
    return ProblemError(
        ProblemType.TASK_DELETED,
        "The task this Idempotency-Key created has been deleted since; use a new key for a new task.",
    )


def task_limit_reached(limit: int) -> ProblemError:
    return ProblemError(
        ProblemType.TASK_LIMIT_REACHED,
        f"You have {limit} tasks, the most one user may have; delete some to create more.",
    )


def _unreadable_framing(detail: str) -> ProblemError:
    # Where the body ends is unknowable (RFC 9112, sections 6.1, 6.3, 7.1), so the connection cannot be
    # reused: it is closed after the answer.
    return ProblemError(ProblemType.BAD_REQUEST, detail, headers={"Connection": "close"})


def malformed_content_length() -> ProblemError:
    return _unreadable_framing("Content-Length is not a number of bytes.")


def unsupported_transfer_coding() -> ProblemError:
    # RFC 9112, section 6.1: a transfer coding the server does not understand is a 501. Left to the
    # server, gzip or an unknown name before chunked was dropped and the body read as plain chunks.
    # The body is left unread, so the connection cannot be reused.
    return ProblemError(
        ProblemType.NOT_IMPLEMENTED,
        "The only Transfer-Encoding this API implements is chunked; send the body with that alone, or "
        "with Content-Length.",
        headers={"Connection": "close"},
    )


def chunked_twice() -> ProblemError:
    # Chunked is applied once; twice, the server read the inner framing as the body.
    return _unreadable_framing("Transfer-Encoding names chunked more than once; a body is chunked once.")


def unreadable_body() -> ProblemError:
    # A chunked body whose framing is broken: the server hands the app a disconnect, as it does when
    # the client leaves mid-body.
    return _unreadable_framing(
        "The body could not be read: its chunked framing is malformed, or the connection ended mid-body."
    )


def forbidden() -> ProblemError:
    return ProblemError(
        ProblemType.FORBIDDEN,
        "The user id in the path is not the one your token was issued for.",
    )


def payload_too_large(limit: int) -> StarletteHTTPException:
    # An HTTPException, as the 408 below, for the one place it is raised while FastAPI reads a body,
    # which lets only those through (`http_problem` renders it). The rest of the body may still be
    # on its way, unread, so the connection cannot be reused.
    return StarletteHTTPException(
        413, f"The request body is larger than {limit} bytes.", headers={"Connection": "close"}
    )


def request_timeout(seconds: float) -> StarletteHTTPException:
    return StarletteHTTPException(
        408,
        f"The request body did not arrive within {seconds:g} seconds.",
        headers={"Connection": "close"},
    )


def not_found(detail: str = "No such task.") -> ProblemError:
    return ProblemError(ProblemType.NOT_FOUND, detail)


def unauthorized(error: InvalidToken) -> ProblemError:
    # RFC 6750: a request without credentials gets a bare challenge; a bad token names the error.
    challenge = 'Bearer error="invalid_token"' if error.token_was_sent else "Bearer"
    return ProblemError(ProblemType.UNAUTHORIZED, error.reason, headers={"WWW-Authenticate": challenge})


def authentication_unavailable(retry_after: int, *, unpublished_kid: bool = False) -> ProblemError:
    # Not a 401: the token may be perfectly good, and a 401 would send the user to sign in again.
    # Told apart: any client can name a kid nobody published, and the detail of a fetch that failed
    # sent the operator to look for fetch failures in a log that had none.
    detail = (
        "The token names a signing key (kid) the auth server did not publish when its keys were last "
        "fetched, before this token was issued: a key published since may sign it, and the keys are "
        "fetched again at most once every JWKS_REFETCH_COOLDOWN_SECONDS (or the last fetch failed, which "
        "the log says). Try again after Retry-After: still unknown then, the token is refused (401)."
        if unpublished_kid
        else "The keys that verify this token cannot be fetched from the auth server right now: try again "
        "shortly. If this lasts, check where the API looks for them (BETTER_AUTH_JWKS_URL, else under "
        "BETTER_AUTH_URL): its log names the URL and why each fetch failed."
    )
    return ProblemError(
        ProblemType.AUTHENTICATION_UNAVAILABLE,
        detail,
        headers={"Retry-After": str(retry_after)},
    )


def isolation_unverified(retry_after: int) -> ProblemError:
    # Refused, not served: the database may not be keeping users apart right now.
    return ProblemError(
        ProblemType.ISOLATION_UNVERIFIED,
        "The server cannot verify that the database keeps users apart; nothing was read or changed. "
        "An operator has been alerted.",
        headers={"Retry-After": str(retry_after)},
    )


# A stream refused by one worker is retried on a new connection, which the kernel may hand to another
# worker with room: kept alive, the retry goes back to the same full worker each time, however many
# places the others have free (seen under `todo-api serve --workers 2`).
STREAM_REFUSED_CLOSES = {"Connection": "close"}


def streams_unavailable(detail: str, *, retry_after: int) -> ProblemError:
    # Not a 429: the caller may hold no stream at all; this server cannot take one now (everyone's
    # together fill it, or it is shutting down), and a stream opened later, here or elsewhere, will do.
    return ProblemError(
        ProblemType.STREAMS_UNAVAILABLE,
        detail,
        headers={"Retry-After": str(retry_after), **STREAM_REFUSED_CLOSES},
    )


# Every database-unavailable answer keeps one promise (nothing was changed; try again after this
# many seconds); only its words say what happened.
_DATABASE_RETRY_AFTER = {"Retry-After": "5"}


def _database_unavailable(detail: str) -> ProblemError:
    return ProblemError(ProblemType.DATABASE_UNAVAILABLE, detail, headers=_DATABASE_RETRY_AFTER)


def database_unavailable() -> ProblemError:
    return _database_unavailable(
        "The database cannot be reached right now; nothing was changed. Try again shortly."
    )


def database_busy() -> ProblemError:
    # The database answers, its connections are all taken.
    return _database_unavailable(
        "The database is busy: no connection to it came free in time (DB_POOL_TIMEOUT_SECONDS); "
        "nothing was changed. Try again shortly."
    )


def statement_cancelled() -> ProblemError:
    # The database answered, it only did not finish this request in time: not database-unavailable,
    # which counted each such answer as an outage (todo_api_http_unavailable) and told the sender of
    # a search too costly to finish that trying again would help. Found with a search made to cost
    # the most (docs/operations.md, "What one user can make the service hold"): every retry was cut
    # the same way. Retry-After stays: a write that waited on another's row lock is done on a retry.
    return ProblemError(
        ProblemType.STATEMENT_TIMEOUT,
        "The database did not finish this request within its statement timeout "
        "(DB_STATEMENT_TIMEOUT_MS), or an operator cancelled it, or the server did as it stopped; nothing "
        "was changed. A request that waited on another's change to the same task may be done when "
        "tried again; a search costs as much each time it is sent: narrow it (a shorter `q`, a `status`).",
        headers=_DATABASE_RETRY_AFTER,
    )


def lock_wait_given_up() -> ProblemError:
    # As statement_cancelled: the database answered and rolled back; what it gave up on differs.
    return _database_unavailable(
        "The database gave up waiting for a lock this request needed (a task another transaction "
        "is changing, say) within its lock_timeout; nothing was changed. Try again shortly."
    )


def writes_refused() -> ProblemError:
    # The database answers and serves reads: "cannot be reached" sent clients and operators after
    # the network, and told a client that its reads would fail too.
    return _database_unavailable(
        "The database accepts no changes right now (it is read-only: a standby, say); nothing was"
        " changed, and reads are still served. Try again shortly."
    )


def out_of_resources() -> ProblemError:
    # As statement_cancelled: the database answered and rolled back. Not "cannot be reached": it
    # answers, and a client told so would blame its network.
    return _database_unavailable(
        "The database is out of a resource it needs (its disk is full, say) and refused this request;"
        " nothing was changed. Try again later."
    )


def transaction_conflict() -> ProblemError:
    # As statement_cancelled: the database answered and rolled back, here twice in a row.
    return _database_unavailable(
        "The database rolled this request back twice to end a conflict with other transactions (a"
        " deadlock, or a serialization failure); nothing was changed. Try again shortly."
    )


def database_fault() -> ProblemError:
    # Not internal-error: that one says the API has a bug, and sent its developers to the wrong code.
    # As out_of_resources: the database answered and rolled back, and a client can only wait.
    return _database_unavailable(
        "The database failed this request with an error of its own (a corrupted page or index, or a"
        " failing disk, say); nothing was changed. Try again later."
    )


def assigned_id_taken() -> ProblemError:
    # As statement_cancelled: the database answered and rolled back. The words say whose it is to
    # fix, not which key: a client can do nothing but wait.
    return _database_unavailable(
        "The database could not give this write a new id (an operator's to fix); nothing was changed."
        " Try again later."
    )


def outcome_unknown() -> ProblemError:
    # Not database-unavailable: that one promises nothing was changed, and a client that trusts it
    # and retries a create without a key, or a toggle, would do it twice.
    return ProblemError(
        ProblemType.OUTCOME_UNKNOWN,
        "The database stopped answering, or failed, after your change was sent; it may or may not "
        "have been made. Retry with the same Idempotency-Key, or read the task again before changing it.",
        headers=_DATABASE_RETRY_AFTER,
    )


def _field_name(location: tuple[Any, ...]) -> str:
    # A body's unknown member is named by the caller, at any length: shown cut, as one named twice is.
    return ".".join(shown_name(str(part)) for part in location)


def _field_error(error: dict[str, Any]) -> FieldError:
    if error["type"] == "json_invalid":
        # FastAPI puts the character offset where a field name would go: ("body", 17).
        _, position = error["loc"]
        return FieldError(
            field="body", message=f"Not valid JSON at character {position}: {error['ctx']['error']}"
        )
    return FieldError(field=_field_name(error["loc"]), message=error["msg"])


def invalid_input(field: str, message: str) -> ProblemError:
    return ProblemError(
        ProblemType.VALIDATION_ERROR,
        f"Invalid input in: {field}.",
        errors=[FieldError(field=field, message=message)],
    )


def refused_by_the_database(rule: str, *, deletion: bool = False, body_sent: bool = True) -> ProblemError:
    # The API's own rules refuse bad input before it reaches the database; a rule that still refuses
    # it is one the API does not know (a DBA's). The input is invalid all the same: named, never echoed.
    # A DELETE, or a toggle, has no body: a rule (a DBA's trigger) refused what it asked of the task its
    # path names.
    if deletion:
        return invalid_input(
            "path.task_id", f"The database refuses to delete this task by {rule}; nothing was changed."
        )
    if not body_sent:
        return invalid_input(
            "path.task_id", f"The database refuses this change to the task by {rule}; nothing was changed."
        )
    return invalid_input("body", f"The database refuses this value by {rule}; nothing was changed.")


def _validation_problem(exc: RequestValidationError) -> ProblemError:
    # Never echo the input back: it may be huge, or a secret pasted in the wrong field.
    found = exc.errors()
    errors = [_field_error(error) for error in found[:MAX_LISTED_ERRORS]]
    # Each field once: one may break two rules (a query parameter both repeated and not UTF-8).
    names = ", ".join(dict.fromkeys(error.field for error in errors))
    unlisted = len(found) - len(errors)
    more = f", and {unlisted} more" if unlisted else ""
    return ProblemError(
        ProblemType.VALIDATION_ERROR,
        f"Invalid input in: {names}{more}.",
        errors=errors,
    )


# The types of the statuses an HTTPException carries: FastAPI's and Starlette's own, and the API's
# from where only they get through (a body being read).
_HTTP_TYPES = {
    kind.status: kind
    for kind in (
        ProblemType.NOT_FOUND,
        ProblemType.METHOD_NOT_ALLOWED,
        ProblemType.REQUEST_TIMEOUT,
        ProblemType.PAYLOAD_TOO_LARGE,
    )
}


def http_problem(exc: StarletteHTTPException) -> ProblemError:
    """The problem for an HTTPException: FastAPI's own, and those raised where only they get through
    (a body being read, api/http/body_limit.py)."""
    if exc.status_code == 400:
        # FastAPI's only 400, raised from what failed: the body never arrived whole, or it came but
        # could not be decoded at all (not UTF-8, or JSON the parser will not read), which to the
        # client is invalid input like any other malformed JSON.
        if isinstance(exc.__cause__, ClientDisconnect):
            return unreadable_body()
        if isinstance(exc.__cause__, UnreadJson):
            return invalid_input("body", str(exc.__cause__))
        if exc.__cause__ is not None and not isinstance(exc.__cause__, ValueError):
            # Not the body's fault (a UnicodeDecodeError or a JSONDecodeError is a ValueError): what
            # the server could not have while reading it (a file descriptor, memory) was a 422 that
            # told the client its valid body was invalid (the limits probe, /tmp/s79-limits).
            raise exc.__cause__
        return invalid_input("body", "The body is not valid JSON in UTF-8.")
    kind = _HTTP_TYPES.get(exc.status_code, ProblemType.HTTP_ERROR)
    detail = exc.detail if isinstance(exc.detail, str) else kind.heading
    return ProblemError(kind, detail, headers=dict(exc.headers or {}), status=exc.status_code)


def problem_content(types: Sequence[ProblemType]) -> dict[str, Any]:
    """The `content` of an error response: a Problem whose `type` is one of `types`, the ones this
    operation can answer this status with, so that a client (and schema.ts) knows what to switch on."""
    one_of = {
        "required": ["type"],
        "properties": {"type": {"type": "string", "enum": [problem.urn for problem in types]}},
    }
    schema = {"allOf": [{"$ref": "#/components/schemas/Problem"}, one_of]}
    return {PROBLEM_MEDIA_TYPE: {"schema": schema}}


def problem_description(description: str, types: Sequence[ProblemType]) -> str:
    """`description`, followed by the problem types its `content` lists: the words say what each means."""
    listed = ", ".join(f"`{problem.urn}`" for problem in types)
    return f"{description} Problem type{'s' if len(types) > 1 else ''}: {listed}."


def error_response(
    description: str, *, types: Sequence[ProblemType], headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error: a Problem of one of `types`, under its own media type.
    `model` registers the Problem schema the content refers to (FastAPI documents it as
    application/json too; `document_problem_media_type` drops that one)."""
    entry: dict[str, Any] = {
        "model": Problem,
        "description": problem_description(description, types),
        "content": problem_content(types),
    }
    if headers:
        entry["headers"] = headers
    return entry


def document_problem_media_type(document: OpenApiDocument) -> None:
    """FastAPI documents every response model as application/json; errors are problem+json, with the
    types `error_response` lists."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            if status[0] in "45" and "application/json" in content:
                content.setdefault(PROBLEM_MEDIA_TYPE, content.pop("application/json"))


def document_problem_status(document: OpenApiDocument) -> None:
    """Declares the `status` of every problem the document lists by then as that of the answer that
    carries it: with the Problem schema's bare integer, the docs page showed every problem's example
    with `"status": 0`. Amend after every error response is declared."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for status, response in operation["responses"].items():
            if PROBLEM_MEDIA_TYPE in response.get("content", {}):
                _, listed = response["content"][PROBLEM_MEDIA_TYPE]["schema"]["allOf"]
                listed["properties"]["status"] = {"type": "integer", "enum": [int(status)]}
                listed["required"] = ["type", "status"]


def document_problems_not_stored(document: OpenApiDocument) -> None:
    """Declares Cache-Control on every 4xx and 5xx the document lists by then, where a response does not
    describe its own (the 400 that may be the server's, api/http/body_limit.py). Amend before the
    server's 431 is declared: that answer carries none of the API's headers."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for status, response in operation["responses"].items():
            if status[0] in "45":
                response.setdefault("headers", {}).setdefault("Cache-Control", _NOT_STORED_HEADER)


def install_problem_handlers(app: FastAPI, isolation: IsolationWatch) -> None:
    """Every problem's handler; a breach of isolation also has `isolation` check again at once."""

    @app.exception_handler(ProblemError)
    async def on_problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(_validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(http_problem(exc))

    @app.exception_handler(InvalidToken)
    async def on_invalid_token(_: Request, exc: InvalidToken) -> JSONResponse:
        return problem_response(unauthorized(exc))

    @app.exception_handler(UserShareExceeded)
    async def on_share_exceeded(_: Request, exc: UserShareExceeded) -> JSONResponse:
        detail = f"You already have {exc.per_user} requests at the database; try again when they are done."
        return problem_response(too_many_requests(detail, retry_after=1))

    @app.exception_handler(SearchUnderway)
    async def on_search_underway(_: Request, exc: SearchUnderway) -> JSONResponse:
        detail = (
            "Another search of yours (a list with q) is still running, and yours run one at a time; "
            "nothing was done. Try again when it is done, or narrow it: a shorter q, a status."
        )
        return problem_response(too_many_requests(detail, retry_after=1))

    @app.exception_handler(KeysUnavailable)
    async def on_keys_unavailable(_: Request, exc: KeysUnavailable) -> JSONResponse:
        return problem_response(
            authentication_unavailable(exc.retry_after_seconds, unpublished_kid=exc.unpublished_kid)
        )

    @app.exception_handler(IsolationUnverified)
    async def on_isolation_unverified(_: Request, exc: IsolationUnverified) -> JSONResponse:
        return problem_response(isolation_unverified(retry_after=exc.retry_after_seconds))

    @app.exception_handler(IsolationBreach)
    async def on_isolation_breach(_: Request, exc: IsolationBreach) -> JSONResponse:
        isolation.distrust(exc)
        return problem_response(isolation_unverified(retry_after=isolation.seconds_until_next_check()))

    @app.exception_handler(AlreadyExists)
    async def on_unexpected_unique_key(_: Request, exc: AlreadyExists) -> JSONResponse:
        # The one unique key a request can run into on purpose, a repeated Idempotency-Key, is
        # caught below this layer; any other is a key on what a user writes, which the isolation
        # check reports: answering its conflict would tell the caller another user stored the
        # value. Fail closed, as for a row-security violation, until a check completes clean.
        isolation.distrust_unique_key(exc)
        return problem_response(isolation_unverified(retry_after=isolation.seconds_until_next_check()))

    @app.exception_handler(MissingReference)
    async def on_unexpected_foreign_key(_: Request, exc: MissingReference) -> JSONResponse:
        # A key the API ships that finds the caller's user row gone is retried below this layer,
        # the row stored again; any other is a key on what a user writes, which the isolation check
        # reports: answering it would tell the caller whether another user's row exists.
        isolation.distrust_foreign_key(exc)
        return problem_response(isolation_unverified(retry_after=isolation.seconds_until_next_check()))

    @app.exception_handler(CheckRefused)
    async def on_check_refused(request: Request, exc: CheckRefused) -> JSONResponse:
        # Its name only: the values it refused are a user's content.
        logger.warning("the database refused a write by %s", exc.rule)
        # Whether a body came, by its head alone: the route has read the body, which cannot be read twice.
        body_sent = (
            request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        )
        return problem_response(
            refused_by_the_database(exc.rule, deletion=request.method == "DELETE", body_sent=body_sent)
        )

    async def on_database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # With what the database (or the pool) said: the class alone reads the same for a server
        # refusing logins, a dropped database and a failing disk.
        logger.warning("database unavailable: %s", in_one_line(exc))
        return problem_response(database_unavailable())

    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, on_database_unavailable)

    # More specific than DatabaseUnavailable, as are OutcomeUnknown and those below, so Starlette
    # picks this handler for it.
    @app.exception_handler(DatabaseBusy)
    async def on_database_busy(_: Request, exc: DatabaseBusy) -> JSONResponse:
        logger.warning("database busy: %s", exc)
        return problem_response(database_busy())

    @app.exception_handler(StatementCancelled)
    async def on_statement_cancelled(_: Request, exc: StatementCancelled) -> JSONResponse:
        logger.warning("statement cancelled: %s", exc)
        return problem_response(statement_cancelled())

    @app.exception_handler(LockWaitGivenUp)
    async def on_lock_wait_given_up(_: Request, exc: LockWaitGivenUp) -> JSONResponse:
        logger.warning("lock wait given up: %s", exc)
        return problem_response(lock_wait_given_up())

    @app.exception_handler(WritesRefused)
    async def on_writes_refused(_: Request, exc: WritesRefused) -> JSONResponse:
        logger.warning("the database refused a write for being read-only: %s", exc)
        return problem_response(writes_refused())

    @app.exception_handler(OutOfResources)
    async def on_out_of_resources(_: Request, exc: OutOfResources) -> JSONResponse:
        # An error, not a warning: it lasts until an operator frees or raises what ran out.
        logger.error("the database is out of a resource it needs: %s", exc)
        return problem_response(out_of_resources())

    @app.exception_handler(TransactionConflict)
    async def on_transaction_conflict(_: Request, exc: TransactionConflict) -> JSONResponse:
        logger.warning("transaction conflict, twice: %s", exc)
        return problem_response(transaction_conflict())

    @app.exception_handler(DatabaseFault)
    async def on_database_fault(_: Request, exc: DatabaseFault) -> JSONResponse:
        # An error, not a warning: corruption, or a failing disk, lasts until an operator repairs it.
        logger.error("the database failed with an error of its own: %s", exc)
        return problem_response(database_fault())

    @app.exception_handler(AssignedIdTaken)
    async def on_assigned_id_taken(_: Request, exc: AssignedIdTaken) -> JSONResponse:
        # An error, not a warning: it repeats at every write until an operator moves the sequence.
        logger.error(
            "the database assigned a new row an id already stored (%s): the sequence behind it is behind"
            " the table's rows, as after a restore or copy without its value; move it past them"
            " (docs/operations.md, Backup and restore)",
            exc.constraint,
        )
        return problem_response(assigned_id_taken())

    # More specific than DatabaseUnavailable, so Starlette picks this handler for it.
    @app.exception_handler(OutcomeUnknown)
    async def on_outcome_unknown(_: Request, exc: OutcomeUnknown) -> JSONResponse:
        logger.warning("outcome unknown: %s", exc)
        return problem_response(outcome_unknown())
