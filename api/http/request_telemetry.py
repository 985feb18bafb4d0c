"""What each request leaves behind for the operator: one access line, its metrics, and (when traces
are on) a span. A bug's exception ends here too: logged once, with its request id and traceback. The
500 problem that answers it is sent further in, inside CORS, by the ServerErrorMiddleware api/app.py
installs, which then raises the exception on to here.

A write that changed a task says so on that same line (`note_change`): one record per request, the
critical actions as visible as every access line (both are `api` INFO records, which LOG_LEVEL governs
together). Never the token or the task's content.

It sits inside the request-id middleware, so every line it writes carries the id, and outside the
body limit and CORS, so their answers are counted like any other.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.telemetry import metrics
from api.telemetry.logs import access, logfmt_value
from api.telemetry.tracing import Tracer, finish_server_span, recorded_ids, server_span

logger = logging.getLogger(__name__)


# Methods a client may send are any token; as a label they would be unbounded.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _known_method(scope: Scope) -> str | None:
    method: str = scope["method"]
    return method if method in _KNOWN_METHODS else None


def _route_template(scope: Scope, root_path_as_sent: str, routes: Sequence[BaseRoute]) -> str | None:
    """The template of the route that answered `scope`, which came in with `root_path_as_sent`; None
    when no route matches its path."""
    path: str | None = getattr(scope.get("route"), "path", None)
    if path is not None:
        return path
    # No route in the scope: the request was answered before the router (a body over the limit), or
    # by FastAPI's router, which names only its own routes there, not a plain Starlette one such as
    # /openapi.json. The template is the route's the router would have picked, as it picks it, from
    # the root_path as sent: a mount (the docs' assets) adds the path it matched to the scope's
    # root_path, after which the path left matches nothing.
    as_sent = {**scope, "root_path": root_path_as_sent}
    partial: str | None = None
    for route in routes:
        template: str | None = getattr(route, "path", None)
        if template is None:
            continue
        match, _ = route.matches(as_sent)
        if match is Match.FULL:
            return template
        if match is Match.PARTIAL and partial is None:
            partial = template
    return partial


def _user_id(scope: Scope) -> str | None:
    # Set once the token is verified (`api.http.caller`): a 403 or 429 after that names the user too.
    user_id: str | None = scope.get("state", {}).get("user_id")
    return user_id


ChangeAction = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class _Change:
    action: ChangeAction
    task_id: int


def note_change(request: Request, action: ChangeAction, task_id: int) -> None:
    """Put what this request changed on its access line. Call it once the change is committed, and
    not for a request that changed nothing (a refused write, an idempotent replay, a no-op update)."""
    request.state.change = _Change(action, task_id)


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute], tracer: Tracer | None = None) -> None:
        self.app = app
        self.routes = routes  # every route the app serves, for requests the router never saw
        self.tracer = tracer
        # The metric children by their labels: prometheus_client's labels() validates them on every
        # call, and the set of routes, methods and statuses is small.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 0
        trace: tuple[str, str] | None = None  # the server span's trace and span ids, when recorded

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.tracer is None:
                await self.app(scope, receive, noting_status)
            else:
                method = _known_method(scope)
                with server_span(self.tracer, scope, method=method) as span:
                    trace = recorded_ids(span)
                    try:
                        await self.app(scope, receive, noting_status)
                    except Exception:
                        status = 500  # as the access line below counts it
                        raise
                    finally:
                        # A bug's span too names its route and status (the span records the exception).
                        finish_server_span(
                            span,
                            method=method,
                            route=_route_template(scope, root_path, self.routes),
                            status=status,
                        )
        except Exception:
            logger.exception("unhandled error")
            # The 500 problem has been sent, or the response had started before the bug: then
            # returning is enough, as the server sees that it was never completed and aborts it
            # (granian and uvicorn both), so the client gets it cut off, not ended. Re-raising would
            # only have the server log the traceback a second time.
            status = 500
        self._record(scope, root_path, status, time.perf_counter() - started, trace)

    def _record(
        self, scope: Scope, root_path: str, status: int, seconds: float, trace: tuple[str, str] | None
    ) -> None:
        method = _known_method(scope) or "OTHER"
        route = _route_template(scope, root_path, self.routes) or metrics.UNMATCHED_ROUTE
        counted = self._counted.get((method, route, status))
        if counted is None:
            counted = self._counted[method, route, status] = metrics.requests.labels(
                method, route, str(status)
            )
        counted.inc()
        timed = self._timed.get(route)
        if timed is None:
            timed = self._timed[route] = metrics.request_duration.labels(route)
        timed.observe(seconds)
        milliseconds = round(seconds * 1000, 2)
        user_id = _user_id(scope)
        fields: dict[str, object] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": milliseconds,
            "user_id": user_id,
        }
        message = "%s %s %d %.2fms user=%s"
        args: list[object] = [method, route, status, milliseconds, logfmt_value(user_id) if user_id else "-"]
        change: _Change | None = scope.get("state", {}).get("change")
        if change is not None:
            fields["action"], fields["task_id"] = change.action, change.task_id
            message += " action=%s task=%d"
            args += [change.action, change.task_id]
        if trace is not None:
            # What joins this line to its trace in the tracing backend, and the trace to this line.
            fields["trace_id"], fields["span_id"] = trace
            message += " trace=%s span=%s"
            args += trace
        access.info(message, *args, extra=fields)
