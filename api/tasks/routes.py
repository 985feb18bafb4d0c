"""The six task endpoints. Handlers are thin: parse, run one statement with `Database.run`, shape."""

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Request, Response, status
from pydantic import BaseModel, Field, TypeAdapter, field_validator

from api.db.database import Rows
from api.db.errors import LimitReached
from api.http.caller import AuthenticatedRoute, caller_of
from api.http.parameters import parameter_docs, parse_parameters
from api.http.problems import error_response, invalid_input, not_found, task_limit_reached
from api.tasks import queries
from api.tasks.listing import MAX_TASK_ID, Cursor, TaskListParams
from api.tasks.models import CompletionUpdate, TaskCreate, TaskPublic, TaskUpdate
from api.telemetry.logs import log_change


class TaskPath(BaseModel):
    task_id: int = Field(ge=1, le=MAX_TASK_ID, description="The task's id.")

    @field_validator("task_id", mode="before")
    @classmethod
    def ascii_digits(cls, value: object) -> object:
        # int() would also read "4_0", "+1", " 1" and other scripts' digits.
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise ValueError("must be a task id: ASCII digits only")
        return value


_TASK_PATH_DOCS = parameter_docs(TaskPath, "path")


def _task_id(request: Request) -> int:
    return parse_parameters(request, TaskPath, "path").task_id


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_response("Missing, malformed, badly signed, expired or not-yet-valid token."),
    403: error_response("The user id in the path is not the token's subject."),
    422: error_response("Invalid input: each bad field is listed in `errors`."),
    503: error_response(
        "The database, or Better Auth's keys, cannot be reached; retry after the `Retry-After` seconds."
    ),
}
_TASK_ERRORS = {**_AUTH_ERRORS, 404: error_response("No such task, or it belongs to someone else.")}

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    responses=_AUTH_ERRORS,
    route_class=AuthenticatedRoute,
)


# Rows are validated into TaskPublic once and dumped to JSON once, and the handlers return the bytes:
# `response_model` still documents the shape, without FastAPI validating everything a second time.
_TASK_LIST = TypeAdapter(list[TaskPublic])


def _json(
    content: bytes, status_code: int = status.HTTP_200_OK, headers: dict[str, str] | None = None
) -> Response:
    return Response(content, status_code=status_code, headers=headers, media_type="application/json")


def _the_task(rows: Rows) -> TaskPublic:
    if not rows:
        raise not_found()
    return TaskPublic.model_validate(rows[0])


def _task_path(user_id: str, task_id: int) -> str:
    return f"/api/{quote(user_id, safe='')}/tasks/{task_id}"


def _next_page_link(request: Request, user_id: str, cursor: Cursor) -> str:
    params = [(key, value) for key, value in request.query_params.multi_items() if key != "cursor"]
    params.append(("cursor", cursor.encode()))
    return f'</api/{quote(user_id, safe="")}/tasks?{urlencode(params)}>; rel="next"'


@router.get(
    "",
    response_model=list[TaskPublic],
    summary="List your tasks",
    description=(
        "Newest first by default. When more tasks match than `limit`, the `Link` header carries "
        '`rel="next"` with an opaque cursor for the next page.'
    ),
    openapi_extra=parameter_docs(TaskListParams, "query"),
)
async def list_tasks(request: Request) -> Response:
    wanted = parse_parameters(request, TaskListParams, "query")
    limit = wanted.limit
    caller = caller_of(request)
    user = caller.user
    rows = await caller.run(queries.list_tasks(user.id, wanted), read_only=True)
    headers = {}
    if len(rows) > limit:
        last_shown = Cursor.after_row(wanted.sort, wanted.sort_order, rows[limit - 1])
        headers["Link"] = _next_page_link(request, user.id, last_shown)
    return _json(_TASK_LIST.dump_json(_TASK_LIST.validate_python(rows[:limit])), headers=headers)


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses={
        201: {"headers": {"Location": {"description": "The new task's URL."}}},
        409: error_response("You have MAX_TASKS_PER_USER tasks already; nothing was created."),
    },
)
async def create_task(request: Request, data: TaskCreate) -> Response:
    caller = caller_of(request)
    user = caller.user
    try:
        rows = await caller.run(queries.create_task(user, data), read_only=False)
    except LimitReached:
        raise task_limit_reached(caller.database.max_tasks_per_user) from None
    task = _the_task(rows)
    log_change("create", user_id=user.id, task_id=task.id)
    return _json(
        task.model_dump_json().encode(),
        status.HTTP_201_CREATED,
        headers={"Location": _task_path(user.id, task.id)},
    )


@router.get(
    "/{task_id}",
    response_model=TaskPublic,
    summary="Get one task",
    responses=_TASK_ERRORS,
    openapi_extra=_TASK_PATH_DOCS,
)
async def read_task(request: Request) -> Response:
    task_id = _task_id(request)
    caller = caller_of(request)
    task = _the_task(await caller.run(queries.get_task(caller.user.id, task_id), read_only=True))
    return _json(task.model_dump_json().encode())


@router.put(
    "/{task_id}",
    response_model=TaskPublic,
    summary="Update a task",
    description="Fields left out keep their value; `description: null` clears the description.",
    responses=_TASK_ERRORS,
    openapi_extra=_TASK_PATH_DOCS,
)
async def update_task(request: Request, data: TaskUpdate) -> Response:
    task_id = _task_id(request)
    caller = caller_of(request)
    user, changes = caller.user, data.changes()
    query = queries.update_task(user, task_id, changes) if changes else queries.get_task(user.id, task_id)
    task = _the_task(await caller.run(query, read_only=not changes))
    if changes:
        log_change("update", user_id=user.id, task_id=task.id)
    return _json(task.model_dump_json().encode())


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a task",
    responses=_TASK_ERRORS,
    openapi_extra=_TASK_PATH_DOCS,
)
async def delete_task(request: Request) -> Response:
    task_id = _task_id(request)
    caller = caller_of(request)
    if not await caller.run(queries.delete_task(caller.user, task_id), read_only=False):
        raise not_found()
    log_change("delete", user_id=caller.user.id, task_id=task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    summary="Complete, reopen or toggle a task",
    description=('With `{"completed": true}` or `false`, set it (safe to retry); with no body, toggle it.'),
    responses=_TASK_ERRORS,
    openapi_extra=_TASK_PATH_DOCS,
)
async def complete_task(
    request: Request,
    # Not `CompletionUpdate | None`: the document would then promise that a JSON null is accepted.
    data: Annotated[CompletionUpdate, Body()] = None,  # type: ignore[assignment]
) -> Response:
    task_id = _task_id(request)
    if data is None and await request.body():
        # FastAPI reads a JSON `null` body as no body; only a truly empty body means "toggle".
        raise invalid_input("body", 'Send no body to toggle, or {"completed": true|false}.')
    completed = data.completed if data is not None else None
    caller = caller_of(request)
    task = _the_task(
        await caller.run(queries.set_completed(caller.user, task_id, completed), read_only=False)
    )
    log_change("update", user_id=caller.user.id, task_id=task.id)
    return _json(task.model_dump_json().encode())
