"""The task endpoints. Handlers are thin: FastAPI parses, they run one statement as the caller
(`Caller.run`) and return its rows, and FastAPI validates and shapes them once, through
`response_model` (hence `-> Any`, as FastAPI's docs write a handler whose response_model differs
from what it returns)."""

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from psycopg.rows import DictRow
from pydantic import BeforeValidator

from api.db.database import Rows
from api.db.errors import LimitReached
from api.http.caller import AuthenticatedRoute, Caller, CallerDep
from api.http.conditional import ANY
from api.http.problems import (
    ProblemType,
    error_response,
    invalid_input,
    list_precondition_failed,
    not_found,
    precondition_failed,
    task_limit_reached,
)
from api.http.query import ascii_digits, parameter_names, strict_parameters
from api.http.refusals import RETRY_AFTER, invalid_request_doc, too_many_requests_doc
from api.http.request_telemetry import note_change
from api.http.services import services
from api.tasks import docs, queries
from api.tasks.etags import (
    etag,
    if_match_versions,
    if_none_match_tags,
    list_preconditions_hold,
    named_versions,
    names_version,
)
from api.tasks.idempotency import create_once, idempotency_key, refuse_a_key
from api.tasks.listing import MAX_TASK_ID, Cursor, TaskListParams
from api.tasks.models import CompletionUpdate, TaskCreate, TaskPublic, TaskUpdate

TaskId = Annotated[
    int, Path(ge=1, le=MAX_TASK_ID, description="The task's id."), BeforeValidator(ascii_digits)
]

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    route_class=AuthenticatedRoute,
)


def _task_or_404(rows: Rows) -> DictRow:
    """The task a statement returned; 404 when it returned none (no such task, or not yours)."""
    if not rows:
        raise not_found()
    return rows[0]


def _written_or_412(rows: Rows, conditions: queries.Conditions) -> DictRow:
    """The task a write returned; 404 when there is no such task, 412 when If-Match named another
    version or If-None-Match named this one (the write's own WHERE decided:
    `api.tasks.queries._conditional_write`)."""
    row = _task_or_404(rows)
    if row.get("written") is False:
        _refuse_unless_met(row, conditions)
        # Met by a version made after the write looked, which it was not made on all the same.
        raise precondition_failed(etag(row["id"], row["version"]))
    return row


def _refuse_unless_met(row: Mapping[str, Any], conditions: queries.Conditions) -> None:
    """412 unless the task as it is meets `conditions`; If-Match is evaluated first (RFC 9110,
    section 13.2.2). For a task read rather than written (a GET, or a write with nothing to change)
    and for a write's own refusal alike."""
    version, current = row["version"], etag(row["id"], row["version"])
    if conditions.versions is not None and version not in conditions.versions:
        raise precondition_failed(current)
    if conditions.not_versions is not None and version in conditions.not_versions:
        raise precondition_failed(current, field="If-None-Match")


async def _write_preconditions(caller: Caller, request: Request, task_id: int) -> queries.Conditions:
    """The preconditions of a write to one task, for update, toggle and delete alike, which the
    write's own statement checks.

    If-Match is read first (RFC 9110, section 13.2.2): a 428 for a missing one (REQUIRE_IF_MATCH) or a
    422 for a malformed one costs no read. Then If-None-Match (section 13.1.2): its entity-tags become
    versions the write's statement refuses; `*`, which no write to a task that exists can pass, is a
    412 once a read finds the task (a 404 when it finds none)."""
    versions = if_match_versions(request, task_id, required=services(request.app).settings.require_if_match)
    none_match = if_none_match_tags(request)
    if none_match == ANY:
        row = _task_or_404(await caller.run(queries.get_task(caller.user.id, task_id)))
        _refuse_unless_met(row, queries.Conditions(versions))  # If-Match's 412 first
        raise precondition_failed(etag(task_id, row["version"]), field="If-None-Match")
    not_versions = None if none_match is None else named_versions(none_match, task_id)
    return queries.Conditions(versions, not_versions)


def _with_etag(row: Mapping[str, Any], response: Response) -> Mapping[str, Any]:
    """One task's row, its ETag set on the response."""
    response.headers["ETag"] = etag(row["id"], row["version"])
    return row


def _task_path(user_id: str, task_id: int) -> str:
    return f"/api/{quote(user_id, safe='')}/tasks/{task_id}"


# What a next page's URL keeps of the request: the list's own parameters. One the list ignores stays
# out, or a long one, re-encoded, would make a URL longer than the request head the server accepts.
_KEPT_FOR_NEXT_PAGE = frozenset(parameter_names(TaskListParams)) - {"cursor"}


def _next_page_link(request: Request, user_id: str, cursor: Cursor) -> str:
    params = [(key, value) for key, value in request.query_params.multi_items() if key in _KEPT_FOR_NEXT_PAGE]
    params.append(("cursor", cursor.encode()))
    return f'</api/{quote(user_id, safe="")}/tasks?{urlencode(params)}>; rel="next"'


@router.get(
    "",
    response_model=list[TaskPublic],
    operation_id="listTasks",
    summary="List your tasks",
    description=(
        "Newest first by default. When more tasks match than `limit`, the `Link` header carries "
        '`rel="next"` with an opaque cursor for the next page. Each parameter is given at most '
        "once, as percent-encoded UTF-8: a repeated one, one not in UTF-8, or one holding raw bytes "
        "beyond ASCII, is a 422; `limit` has no leading zero; parameters not listed here are ignored."
    ),
    responses={
        200: {"headers": docs.LINK},
        304: {"description": "If-None-Match is `*`, and the task list exists: no body."},
        # Searches of a user's run one at a time on each server process (api/db/fair_share.py).
        429: too_many_requests_doc(
            "a search (`q`) while another of yours ran on this server process all through "
            "DB_POOL_TIMEOUT_SECONDS"
        ),
        **docs.LIST_CONDITIONS,
    },
    dependencies=[Depends(strict_parameters(TaskListParams))],
    openapi_extra=docs.operation_docs(headers=(docs.IF_MATCH_ON_LIST, docs.IF_NONE_MATCH_ON_LIST)),
)
async def list_tasks(
    caller: CallerDep, listing: Annotated[TaskListParams, Query()], request: Request, response: Response
) -> Any:
    if not list_preconditions_hold(request):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED)
    limit, user = listing.limit, caller.user
    rows = await caller.run(queries.list_tasks(user.id, listing))
    if len(rows) > limit:
        last_shown = Cursor.after_row(listing.sort, listing.sort_order, rows[limit - 1])
        response.headers["Link"] = _next_page_link(request, user.id, last_shown)
    return rows[:limit]


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    operation_id="createTask",
    summary="Create a task",
    description=(
        "With an Idempotency-Key, safe to retry: a repeat creates nothing and gets 201 with the task "
        "that key created, as it is now, and `Idempotent-Replayed: true`."
    ),
    responses={
        201: {
            "description": "The new task; for a repeated Idempotency-Key, the one it made, as it is now.",
            "headers": {**docs.LOCATION, **docs.CONTENT_LOCATION, **docs.ETAG, **docs.IDEMPOTENT_REPLAYED},
        },
        409: error_response(
            "Nothing was created: you have MAX_TASKS_PER_USER tasks already (type "
            f"{ProblemType.TASK_LIMIT_REACHED.urn}), or other requests with this Idempotency-Key "
            f"were being handled at the same time (type {ProblemType.IDEMPOTENCY_KEY_IN_USE.urn}, "
            "the one with `Retry-After`): send the same request again after it.",
            types=[ProblemType.TASK_LIMIT_REACHED, ProblemType.IDEMPOTENCY_KEY_IN_USE],
            headers=RETRY_AFTER,
        ),
        410: error_response(
            "A repeated Idempotency-Key whose task has been deleted since; nothing was created.",
            types=[ProblemType.TASK_DELETED],
        ),
        # A repeated Idempotency-Key with another body, besides every operation's invalid input.
        422: invalid_request_doc(ProblemType.IDEMPOTENCY_KEY_REUSED),
        **docs.LIST_CONDITIONS,
    },
    openapi_extra=docs.operation_docs(
        headers=(docs.IDEMPOTENCY_KEY, docs.IF_MATCH_ON_LIST, docs.IF_NONE_MATCH_ON_LIST)
    ),
)
async def create_task(caller: CallerDep, data: TaskCreate, request: Request, response: Response) -> Any:
    # The key first: preconditions are evaluated only for a request that would otherwise succeed
    # (RFC 9110, section 13.2.1), and one with a malformed key is a 422 whatever they say.
    key = idempotency_key(request)
    if not list_preconditions_hold(request):
        raise list_precondition_failed("If-None-Match")
    user, settings = caller.user, services(request.app).settings
    try:
        if key is None:
            # An INSERT ... RETURNING returns its row; none would be a bug, never a 404.
            (row,) = await caller.run(queries.create_task(user, data))
            created = True
        else:
            row, created = await create_once(caller, data, key, settings)
    except LimitReached:
        raise task_limit_reached(settings.max_tasks_per_user) from None
    if created:
        note_change(request, "create", row["id"])
    else:
        response.headers[docs.REPLAYED_HEADER] = "true"
    # Content-Location the same: the body is the new task as GET returns it there (RFC 9110, 8.7).
    response.headers["Location"] = response.headers["Content-Location"] = _task_path(user.id, row["id"])
    return _with_etag(row, response)


@router.get(
    "/{task_id}",
    response_model=TaskPublic,
    operation_id="getTask",
    summary="Get one task",
    responses={
        200: {"headers": docs.ETAG},
        304: {
            "description": "If-None-Match names the task's current version: no body.",
            "headers": docs.ETAG,
        },
        **docs.NOT_FOUND,
        **docs.READ_CONDITIONS,
    },
    openapi_extra=docs.operation_docs(headers=(docs.IF_NONE_MATCH, docs.IF_MATCH_ON_READ)),
)
async def read_task(caller: CallerDep, task_id: TaskId, request: Request, response: Response) -> Any:
    # Both fields read before the task: a malformed one is a 422, whatever the other would decide.
    versions = if_match_versions(request, task_id, required=False)
    none_match = if_none_match_tags(request)
    row = _task_or_404(await caller.run(queries.get_task(caller.user.id, task_id)))
    _refuse_unless_met(row, queries.Conditions(versions))
    if names_version(none_match, task_id, row["version"]):
        return Response(
            status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(task_id, row["version"])}
        )
    return _with_etag(row, response)


@router.put(
    "/{task_id}",
    response_model=TaskPublic,
    operation_id="updateTask",
    summary="Update a task",
    description="Fields left out keep their value; `description: null` clears the description.",
    responses={
        200: {"headers": docs.ETAG},
        **docs.NOT_FOUND,
        **docs.WRITE_CONDITIONS,
    },
    openapi_extra=docs.operation_docs(headers=(docs.IF_MATCH, docs.IF_NONE_MATCH_ON_WRITE)),
)
async def update_task(
    caller: CallerDep, task_id: TaskId, data: TaskUpdate, request: Request, response: Response
) -> Any:
    conditions = await _write_preconditions(caller, request, task_id)
    user, changes = caller.user, data.changes()
    if not changes:  # nothing to write: the task as it is, if the preconditions hold
        row = _task_or_404(await caller.run(queries.get_task(user.id, task_id)))
        _refuse_unless_met(row, conditions)
        return _with_etag(row, response)
    row = _written_or_412(
        await caller.run(queries.update_task(user, task_id, changes, conditions)), conditions
    )
    if row["changed"]:  # the same title again, say, is no change: no new version, no event
        note_change(request, "update", task_id)
    return _with_etag(row, response)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="deleteTask",
    summary="Delete a task",
    responses={**docs.NOT_FOUND, **docs.WRITE_CONDITIONS},
    openapi_extra=docs.operation_docs(headers=(docs.IF_MATCH, docs.IF_NONE_MATCH_ON_WRITE)),
)
async def delete_task(caller: CallerDep, task_id: TaskId, request: Request) -> None:
    conditions = await _write_preconditions(caller, request, task_id)
    _written_or_412(await caller.run(queries.delete_task(caller.user, task_id, conditions)), conditions)
    note_change(request, "delete", task_id)


# How to make a toggle safe to retry, for the 422 an Idempotency-Key gets and the document.
_SAFE_TOGGLE = (
    "to retry a toggle safely, send If-Match with the task's ETag (a toggle already made is then a "
    '412), or set the state with {"completed": true|false}.'
)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    operation_id="setTaskCompletion",
    summary="Complete, reopen or toggle a task",
    description=(
        'With `{"completed": true}` or `false`, set it (safe to retry); with no body, toggle it. A '
        f"toggle with an Idempotency-Key is a 422 that changes nothing (only a create stores one): "
        f"{_SAFE_TOGGLE}"
    ),
    responses={
        200: {"headers": {**docs.ETAG, **docs.CONTENT_LOCATION}},
        **docs.NOT_FOUND,
        **docs.WRITE_CONDITIONS,
    },
    openapi_extra=docs.operation_docs(headers=(docs.IF_MATCH, docs.IF_NONE_MATCH_ON_WRITE)),
)
async def complete_task(
    caller: CallerDep,
    task_id: TaskId,
    request: Request,
    response: Response,
    # Not `CompletionUpdate | None`: the document would then promise that a JSON null is accepted.
    data: Annotated[CompletionUpdate, Body()] = None,  # type: ignore[assignment]
) -> Any:
    if data is None and await request.body():
        # FastAPI reads a JSON `null` body as no body; only a truly empty body means "toggle".
        raise invalid_input("body", 'Send no body to toggle, or {"completed": true|false}.')
    completed = data.completed if data is not None else None
    if completed is None:
        # A toggle repeated toggles back (the IETF draft names PATCH among the methods a key may make
        # safe, but nothing stores one here); a key before the preconditions, as a create reads its own.
        refuse_a_key(request, _SAFE_TOGGLE)
    conditions = await _write_preconditions(caller, request, task_id)
    query = queries.set_completed(caller.user, task_id, completed, conditions)
    row = _written_or_412(await caller.run(query), conditions)
    if row["changed"]:  # `completed` set to what it was is no change
        note_change(request, "update", task_id)
    # The body is the task, whose URL is not this request's (RFC 9110, section 6.4.2).
    response.headers["Content-Location"] = _task_path(caller.user.id, task_id)
    return _with_etag(row, response)
