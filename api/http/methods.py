"""HTTP's method rules (RFC 9110, section 9): HEAD answers every GET resource, and a 405 names in
`Allow` every method its resource takes.

FastAPI's routes take one method each, so Starlette's 405 names only the first route that matched the
path (`Allow: GET` on a resource that also takes POST), and no route takes HEAD. Adding HEAD to the
routes would put a second operation, with the same operationId, in the OpenAPI document for each;
instead HEAD is served as GET one layer above the router, and the 405 is computed from every route.
"""

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.problems import method_not_allowed, problem_response

# The order `Allow` lists them in: reads first, then writes by how much they change.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class _HeadAnsweredError(Exception):
    """Raised into a streaming GET that keeps sending after its HEAD was answered."""


class HeadAsGet:
    """Serves a HEAD request as the GET of the same resource and sends its status and headers only
    (Content-Length and ETag included), so every GET route answers HEAD, with whatever GET would
    have answered (401, 304, 404, ...). A streamed GET (an event stream) is stopped at its first
    chunk, and the HEAD's answer ends only once the stream has unwound: a stream that ran on would
    go unseen, and one still unwinding held its place (MAX_STREAMS_PER_USER) from the next request
    on the same connection, which the server starts as soon as the answer ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        stopped = False

        async def send_head_only(message: Message) -> None:
            nonlocal stopped
            if message["type"] != "http.response.body":
                await send(message)
            elif message.get("more_body", False):
                stopped = True
                raise _HeadAnsweredError
            else:
                await send({"type": "http.response.body", "body": b""})

        # The same scope, not a copy: the layers outside read the route and the caller from it
        # afterwards (api/http/request_telemetry.py), and log the method the client sent.
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_head_only)
        except* _HeadAnsweredError:
            pass  # a streaming response raises it from inside its own task group
        finally:
            scope["method"] = "HEAD"
        if stopped:
            await send({"type": "http.response.body", "body": b""})


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """Every method one of `routes` takes at the scope's path, HEAD wherever GET is."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    return [method for method in _METHOD_ORDER if method in methods] + sorted(methods - set(_METHOD_ORDER))


def served_routes(app: FastAPI, routers: Iterable[APIRouter]) -> list[BaseRoute]:
    """Every route `app` serves, each once: `app.routes` may hold an included router as one entry of
    its own rather than as its routes (some FastAPI releases list them, some do not)."""
    served: list[BaseRoute] = []
    for route in [*app.routes, *(route for router in routers for route in router.routes)]:
        if not any(route is known for known in served):  # a route compares by value, not as itself
            served.append(route)
    return served


def install_method_not_allowed(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """The 405 problem, its `Allow` naming every method the resource takes. Call after the routes are
    added; `routers` are the ones `app` includes (`served_routes`). HEAD is `HeadAsGet`'s, which
    `create_app` installs innermost."""
    routes = served_routes(app, routers)

    async def on_method_not_allowed(request: Request, error: Exception) -> JSONResponse:
        methods = allowed_methods(routes, request.scope)
        if not methods and isinstance(error, HTTPException) and error.headers:
            # Refused by a mounted app (the docs' StaticFiles), which names what it takes itself.
            allow = error.headers.get("Allow", "")
            methods = [method.strip() for method in allow.split(",") if method.strip()]
        return problem_response(method_not_allowed(methods))

    app.add_exception_handler(405, on_method_not_allowed)
