"""The six task endpoints. Handlers are thin: parse, run one statement with `Database.run`, shape."""

from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Request, Response, status
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter

from api import queries
from api.db import Rows
from api.dependencies import AuthenticatedRoute, caller_of
from api.log import log_change
from api.models import CompletionUpdate, TaskCreate, TaskPublic, TaskUpdate, no_nul
from api.pagination import MAX_TASK_ID, Cursor, SortKey, SortOrder
from api.problems import error_response, invalid_input, not_found
from api.request_params import parameter_docs, parse_parameters

# A Literal, not an Enum: a parameter's schema must stand alone (`parameter_docs`).
TaskStatus = Literal["all", "pending", "completed"]


class TaskListParams(BaseModel):
    """The list's query parameters, validated by the handler in one call (`api.request_params`)."""

    status: TaskStatus = Field("all", description="Which tasks to list.")
    sort: SortKey = Field("created", description="Sort by creation, last update or title.")
    order: SortOrder | None = Field(None, description="Default: desc for created and updated, asc for title.")
    q: Annotated[str | None, AfterValidator(no_nul)] = Field(
        None, max_length=200, description="Case-insensitive text to find in title or description."
    )
    limit: int = Field(100, ge=1, le=500, description="Page size.")
    cursor: str | None = Field(None, max_length=512, description="From a previous page's Link header.")


_COMPLETED_FOR_STATUS: dict[TaskStatus, bool | None] = {"all": None, "pending": False, "completed": True}
_DEFAULT_ORDER: dict[SortKey, SortOrder] = {"created": "desc", "updated": "desc", "title": "asc"}


class TaskPath(BaseModel):
    task_id: int = Field(ge=1, le=MAX_TASK_ID, description="The task's id.")


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
    params = parse_parameters(request, TaskListParams, "query")
    sort, limit = params.sort, params.limit
    order = params.order or _DEFAULT_ORDER[sort]
    task_filter = queries.TaskFilter(
        completed=_COMPLETED_FOR_STATUS[params.status],
        search=params.q,
        sort=sort,
        order=order,
        after=Cursor.decode(params.cursor, sort=sort, order=order) if params.cursor else None,
        limit=limit,
    )
    caller = caller_of(request)
    user = caller.user
    rows = await caller.run(queries.list_tasks(user.id, task_filter), read_only=True)
    headers = {}
    if len(rows) > limit:
        last = rows[limit - 1]
        sort_value = {"created": last["created_at"], "updated": last["updated_at"], "title": last["title"]}
        headers["Link"] = _next_page_link(request, user.id, Cursor(sort, order, sort_value[sort], last["id"]))
    return _json(_TASK_LIST.dump_json(_TASK_LIST.validate_python(rows[:limit])), headers=headers)


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses={201: {"headers": {"Location": {"description": "The new task's URL."}}}},
)
async def create_task(request: Request, data: TaskCreate) -> Response:
    caller = caller_of(request)
    user = caller.user
    task = _the_task(await caller.run(queries.create_task(user, data), read_only=False))
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
