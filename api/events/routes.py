"""GET /api/{user_id}/events: the caller's task events as Server-Sent Events (`api.events.stream`).

Authenticated like every task route (`AuthenticatedRoute`: the same Bearer token, 401 and 403).
sse-starlette writes the wire format, the heartbeat comments and notices the client leaving.
"""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from api.auth.errors import InvalidToken, KeysUnavailable
from api.auth.verification import Authenticator
from api.events import stream
from api.events.hub import Hub, Subscription
from api.events.services import live_services
from api.http.cache_control import NO_STORE, no_store_header
from api.http.caller import AuthenticatedRoute, CallerDep
from api.http.conditional import field_value
from api.http.problems import ProblemType
from api.http.refusals import service_unavailable_doc, too_many_requests_doc

logger = logging.getLogger(__name__)


class _EventStream(EventSourceResponse):
    """sse-starlette's response, holding the stream's place in the hub.

    Once it holds the place (the route gives it back if anything fails before), it gives it back
    however the stream ends, since nothing else can: its events are an async generator, whose
    `finally` never runs if the generator never started (a client that left before the first event;
    tests/api/test_events.py). A client that stopped reading ends the
    stream like any other way of leaving: the request was the 200 it answered, not a server error
    any user could cause at will (tests/test_slow_event_readers.py)."""

    def __init__(
        self,
        hub: Hub,
        subscription: Subscription,
        events: AsyncIterator[Any],
        *,
        send_timeout: float,
        **kwargs: Any,
    ) -> None:
        # A stream that cannot take an event this long (a client that stopped reading) is closed.
        super().__init__(events, send_timeout=send_timeout, **kwargs)
        # sse-starlette's `Connection: keep-alive` contradicted a client's `Connection: close` and told
        # an HTTP/1.0 client to keep a connection only its close ends: the server manages connections.
        del self.headers["connection"]
        self._hub, self._subscription, self._send_timeout = hub, subscription, send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            logger.info("closed a stream whose client took nothing for %.0f s", self._send_timeout)
        finally:
            self._hub.unsubscribe(self._subscription)


LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": (
        "The `id` of the last event you received: the stream first sends the events after it (of a task "
        "deleted since, its `task.deleted` alone). "
        "Without it (or empty), the stream starts from now. When it is malformed, not one of your events "
        "(another user's, or an id not issued yet), or older than what is kept (EVENTS_RETENTION_HOURS, "
        "and your newest MAX_TASKS_PER_USER events at most) and not your newest event, or 0 (before "
        "any event) while some of your events are no longer kept, the stream starts with "
        "`event: reset`: refetch the list."
    ),
    "schema": {"type": "string"},
}

# Where EventSource polyfills that send headers put the id all the same (Yaffle's
# event-source-polyfill, whose Authorization header reaches us): read as the header is, or such a
# client's every reconnect would start from now and miss what changed meanwhile, with no reset.
LAST_EVENT_ID_QUERY = {
    "name": "lastEventId",
    "in": "query",
    "required": False,
    "description": (
        "The same as the `Last-Event-ID` header, for a client that cannot set it (EventSource "
        "polyfills put it here). Sent with the header, both must name the same id, else the stream "
        "starts with `event: reset`."
    ),
    "schema": {"type": "string"},
}

_EVENTS_DESCRIPTION = f"""\
One event per real change of one of your tasks, in commit order; a write that changes nothing sends
none. A task's delete clears the task from its earlier events: a stream that comes to them after the
delete (resumed from before it, or fallen behind) sends its `task.deleted` alone. Every event has an
`id:`; send the last one back as `Last-Event-ID` (or `lastEventId`) when you reconnect.

- `event: task.created` and `event: task.updated`: `data:` is the task exactly as GET returns it.
- `event: task.deleted`: `data: {{"id": N}}`.
- `event: reset` (`data: {{}}`): refetch the list; the stream goes on after it. It comes first when
  your Last-Event-ID is malformed, not one of your events, or older than what is kept (0, the id a
  stream opens with before you have any event, is older than what is kept once any of your events
  was purged), and at any point after, in place of events the stream fell too far behind to send
  while they were kept, or of one it cannot render, and once your data was erased.

The stream opens with a bare `id:` line (where it starts), sends a `:` comment line every
EVENTS_HEARTBEAT_SECONDS, and ends when your token stops being accepted (JWT_LEEWAY_SECONDS after it
expires, or once the key that signed it is withdrawn) or the server process shuts down: reconnect,
with a fresh token once yours has expired, and your last id. A browser's EventSource cannot send the
Authorization header: stream with fetch (the TypeScript client's `subscribe` does). At most
MAX_STREAMS_PER_USER streams per user and server process; the next waits up to a second for one
of them to close, then is refused with 429. At most
MAX_STREAMS_PER_WORKER streams of all users per server process; the next is refused with 503 (type
{ProblemType.STREAMS_UNAVAILABLE.urn}) and `Retry-After`, as is any stream asked of a server process
that is shutting down. Each of these refusals closes its connection, so that your retry, on a new one,
may reach another server process with room.
"""

router = APIRouter(
    prefix="/api/{user_id}/events",
    tags=["events"],
    route_class=AuthenticatedRoute,
)


# An event's `id:`, as every item of the stream carries it: a number, sent as text.
_EVENT_ID = {
    "type": "string",
    "pattern": "^[0-9]+$",
    "description": "Where the stream stands: send the last one back as `Last-Event-ID`.",
}


def _event(kind: str, data: dict[str, Any], description: str) -> dict[str, Any]:
    """One kind of event as an item of the stream: its `event:`, `id:` and JSON `data:`, and no other
    field (no `retry:`), as FastAPI describes an event whose data is a model."""
    return {
        "type": "object",
        "description": description,
        "properties": {
            "event": {"const": kind},
            "id": _EVENT_ID,
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
        "required": ["event", "id", "data"],
        "additionalProperties": False,
    }


# Where each item of the stream is described. OpenAPI 3.2 calls it `itemSchema` (and FastAPI
# documents its own event streams so), but this is a 3.1 document, whose media type takes no such
# field: validators refused the document, and orval and openapi-generator generated no client from
# it (tests/api/test_openapi.py, `test_the_document_is_valid_openapi_3_1`). An extension is valid 3.1.
ITEM_SCHEMA = "x-itemSchema"


def _stream_content() -> dict[str, Any]:
    """The 200's `text/event-stream`: the body as text, for any OpenAPI 3.1 tool, and each item of it
    as OpenAPI 3.2's `itemSchema` would describe it (`ITEM_SCHEMA`): one item per block of fields,
    `:` comment lines (heartbeats) none."""
    task = {"$ref": "#/components/schemas/TaskPublic"}
    return {
        "schema": {
            "type": "string",
            "description": f"Server-Sent Events, as `{ITEM_SCHEMA}` describes each.",
        },
        ITEM_SCHEMA: {
            "oneOf": [
                {
                    "type": "object",
                    "description": "The first item of every stream that does not start with `reset`: "
                    "where it starts, no event.",
                    "properties": {"id": _EVENT_ID},
                    "required": ["id"],
                    "additionalProperties": False,
                },
                _event("task.created", task, "A task was created: the task exactly as GET returns it."),
                _event("task.updated", task, "A task changed: the task exactly as GET returns it."),
                _event("task.deleted", stream.TaskDeleted.model_json_schema(), "A task was deleted."),
                _event(
                    "reset",
                    {"type": "object", "maxProperties": 0},
                    "Refetch the list: events you have not seen are gone. The stream goes on after it.",
                ),
            ]
        },
    }


def _last_event_id(request: Request) -> str | None:
    """Where the client says it is: the Last-Event-ID header, or the `lastEventId` query parameter.

    Each sent more than once, or the two naming different ids, is more than one claim of where the
    client is: read whole, the claims are no id, and the stream starts with a reset. An empty one is
    none, as for EventSource (WHATWG HTML, "Server-sent events": a last event ID that is the empty
    string is not sent), so the stream starts from now rather than with a reset."""
    header = field_value(request.headers, "Last-Event-ID") or None
    query = ", ".join(request.query_params.getlist("lastEventId")) or None
    if header is None or query is None or header == query:
        return header if header is not None else query
    return f"{header}, {query}"


def _still_trusted(authenticator: Authenticator, token: str) -> Callable[[], Awaitable[bool]]:
    """Whether the token still verifies: a cache hit while its key is published (api/auth)."""

    async def still_trusted() -> bool:
        try:
            await authenticator.authenticate(token)
        except (InvalidToken, KeysUnavailable):
            return False
        return True

    return still_trusted


@router.get(
    "",
    operation_id="streamEvents",
    summary="Stream changes to your tasks",
    description=_EVENTS_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The event stream.",
            "headers": {
                "Cache-Control": no_store_header("each stream is live, and no cache may keep or replay one."),
                # sse-starlette's, for a proxy (nginx's header) to pass each event on as it comes.
                "X-Accel-Buffering": {
                    "description": "`no`: a proxy passes each event on at once rather than buffer them.",
                    "schema": {"type": "string"},
                },
            },
            "content": {"text/event-stream": _stream_content()},
        },
        # Every authenticated operation's 429 and 503 (api/http/refusals.py), with this operation's
        # own refusals (api/events/hub.py) and without outcome-unknown, which only a write can get.
        429: too_many_requests_doc("with MAX_STREAMS_PER_USER streams of yours open on this server process"),
        503: service_unavailable_doc(
            "this server process holds MAX_STREAMS_PER_WORKER streams of all users already, or is "
            f"shutting down (type {ProblemType.STREAMS_UNAVAILABLE.urn})",
            ProblemType.STREAMS_UNAVAILABLE,
            writes=False,
        ),
    },
    openapi_extra={"parameters": [LAST_EVENT_ID, LAST_EVENT_ID_QUERY]},
)
async def stream_events(caller: CallerDep, request: Request) -> Response:
    shared = live_services(request.app)
    hub, settings = shared.events_hub, shared.settings
    # The stream's place is taken first (after a wait, when the user holds all of theirs), so that
    # one refused for want of it reads nothing: otherwise every refused try of a reconnect storm into
    # a full worker (or of a user past their streams) took one of the pool's connections from the
    # requests being served, only to be told 503 (or 429) after.
    subscription = await hub.subscribe(caller.user.id)
    try:
        # An event committed after `start` read where the user's events stand is read by the
        # stream's first read, woken or not.
        begin = await stream.start(caller, _last_event_id(request))
        events = stream.events(
            caller,
            hub,
            subscription,
            begin,
            # Authentication accepts a token until `exp` plus the leeway: so does its stream.
            expires_at=caller.token_expires_at + settings.jwt_leeway_seconds,
            still_trusted=_still_trusted(shared.authenticator, caller.token),
        )
        return _EventStream(
            hub,
            subscription,
            events,
            ping=settings.events_heartbeat_seconds,
            send_timeout=settings.send_timeout_seconds,
            headers={"Cache-Control": NO_STORE},
        )
    except BaseException:
        # Until the response holds it (which gives it back however the stream ends), it is ours to
        # give back: a start the database refused (503, 429 of the fair share) must not keep it.
        hub.unsubscribe(subscription)
        raise
