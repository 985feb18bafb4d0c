"""The app factory: assembles settings, auth, database, middleware and routes. Nothing else."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import APIRouter, FastAPI
from pydantic import SecretStr
from starlette.middleware.errors import ServerErrorMiddleware

from api import __version__
from api.auth.verification import build_authenticator
from api.db.database import Database
from api.db.isolation import IsolationWatch
from api.db.stored_owners import StoredOwners
from api.events import routes as events
from api.events.hub import Hub
from api.events.services import LiveServices
from api.http import health, metrics
from api.http.body_limit import BodyLimits, document_body_limits
from api.http.caller import document_bearer_scheme, document_no_store
from api.http.cors import ProblemCORSMiddleware
from api.http.docs import install_docs
from api.http.in_flight import InFlightCap
from api.http.methods import HeadAsGet, install_method_not_allowed, served_routes
from api.http.openapi import document_request_header, document_response_header, install_openapi
from api.http.paths import EncodedSlashesNameNothing
from api.http.problems import (
    document_problem_media_type,
    document_problem_status,
    document_problems_not_stored,
    install_problem_handlers,
    on_internal_error,
)
from api.http.rate_limit import RateLimiter
from api.http.readiness import SharedReadiness
from api.http.refusals import document_head_too_large
from api.http.request_telemetry import RequestTelemetry
from api.http.slow_readers import SlowReaders
from api.settings import MIN_SECRET_LENGTH, Settings
from api.tasks import routes as tasks
from api.telemetry.logs import configure_logging, default_format, is_acceptable_request_id, new_request_id
from api.telemetry.metrics import forget_this_process
from api.telemetry.tracing import Tracer, send_last_spans, traces_for

# What a browser script may send, and read of a response, when CORS lets its origin call the API:
# every header the OpenAPI document lists (tests/api/test_frontend.py derives them from it).
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
    "Last-Event-ID",
]
CORS_RESPONSE_HEADERS = [
    "Location",
    "Content-Location",
    "Link",
    "ETag",
    "Idempotent-Replayed",
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Policy",
    "RateLimit",
    # A 401's reason (RFC 6750: error="invalid_token" when a fresh token may help).
    "WWW-Authenticate",
    # A 415's answer to a body of another type: the type a request may use (RFC 9110, 15.5.16).
    "Accept",
    # A 415's answer to a compressed body: the codings a request may use (RFC 7694).
    "Accept-Encoding",
    # A 405's answer: the methods the path takes (RFC 9110, section 15.5.6).
    "Allow",
]

# Every router the API serves. A router left out of this list would answer 404 for all its routes;
# `tests/api/test_routers.py` fails when a module defines a router that is not here.
ROUTERS: tuple[APIRouter, ...] = (tasks.router, events.router, health.router, metrics.router)


def create_app(
    settings: Settings | None = None,
    *,
    tracer: Tracer | None = None,
    on_ready: Callable[[], None] | None = None,
    owner_login_expected: bool = False,
) -> FastAPI:
    """The API. `tracer` defaults to the traces the OTEL_EXPORTER_OTLP_* settings ask for (none unless
    set); `on_ready` is called once the database is known to isolate users and requests are served."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format or default_format())
    traces = None
    if tracer is None:
        traces = traces_for(settings.otel_exporter_otlp_endpoint, settings.otel_exporter_otlp_traces_endpoint)
        tracer = None if traces is None else traces.get_tracer("todo-api")
    database = Database.from_settings(settings, tracer=tracer)
    authenticator = build_authenticator(settings)

    isolation = IsolationWatch(
        database,
        interval_seconds=settings.isolation_check_interval_seconds,
        owner_login_expected=owner_login_expected,
    )
    events_hub = Hub(
        max_streams_per_user=settings.max_streams_per_user, max_streams=settings.max_streams_per_worker
    )
    # An idle stream asks whether its token is still trusted only when woken (api/events/stream.py).
    authenticator.when_a_key_is_withdrawn(events_hub.wake_all)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await database.open()
        try:
            await isolation.ensure()
            # Starts fetching Better Auth's keys in the background: an auth server that is briefly
            # down must not keep the API from starting.
            async with authenticator, events_hub.waking(settings), asyncio.TaskGroup() as background:
                watching = background.create_task(isolation.keep_checking(), name="isolation-check")
                if on_ready is not None:
                    on_ready()
                yield
                watching.cancel()
        finally:
            await isolation.close()
            await database.close()
            forget_this_process()
            if traces is not None:
                await send_last_spans(traces)

    app = FastAPI(
        title="todo-api",
        version=__version__,
        summary="A multi-user Todo API whose security lives in Postgres row-level security.",
        lifespan=lifespan,
        # Served by install_docs, with the Cache-Control FastAPI's own routes do not send.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # A trailing slash is another path (404): Starlette's redirect would build its Location
        # from the Host header, which the client chooses.
        redirect_slashes=False,
        # FastAPI's native OpenTelemetry looks for a configured provider on every request, and we
        # ship no SDK for it to find (bench/RESULTS.md, "Levers").
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # What every request shares, read through `services(app)` (api/http/services.py).
    app.state.services = LiveServices(
        settings=settings,
        database=database,
        stored_owners=StoredOwners(),
        authenticator=authenticator,
        isolation=isolation,
        rate_limiter=RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None,
        in_flight=InFlightCap(settings.requests_in_flight_per_user),
        readiness=SharedReadiness(database),
        events_hub=events_hub,
    )
    install_problem_handlers(app, isolation)
    # Each amendment sees what those before it declared.
    install_openapi(
        app,
        (
            document_problem_media_type,
            document_bearer_scheme,
            document_no_store,
            document_body_limits,  # before the header every response carries, which its answers carry too
            document_problems_not_stored,  # after the body limits' problems, before the server's 431
            document_response_header(
                "X-Request-ID",
                "This request's id, in every log line about it: yours if you sent a sane one, else a new "
                "one.",
            ),
            document_request_header(
                "X-Request-ID",
                "Your id for this request, kept, echoed and logged when it is 1 to 128 characters of "
                "`A-Z a-z 0-9 . _ : -`; anything else is replaced by a new one, never refused.",
            ),
            document_head_too_large,  # after that header, which the server's own 431 does not carry
            document_problem_status,  # after every problem is declared
        ),
    )
    routers = [router for router in ROUTERS if settings.metrics_enabled or router is not metrics.router]
    for router in routers:
        app.include_router(router)
    install_docs(app)
    install_method_not_allowed(app, routers)
    # Innermost, just above the router: the path as sent, before a route is chosen from it decoded.
    app.add_middleware(EncodedSlashesNameNothing)
    # Just above it: everything outside (telemetry, limits, CORS) sees the method the client sent.
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        BodyLimits, max_bytes=settings.max_body_bytes, timeout_seconds=settings.body_timeout_seconds
    )
    # A bug's exception becomes the 500 problem here, inside CORS, so that a browser can read it and
    # its X-Request-ID like any other answer; it is raised on, for RequestTelemetry to log and count.
    # Starlette puts one of these outermost too, but that one answers outside CORS.
    app.add_middleware(ServerErrorMiddleware, handler=on_internal_error)
    # Every middleware costs every request something; CORS is only there when a browser origin is
    # configured (without it, a cross-origin browser gets no CORS headers either way). Outside
    # BodyLimits and ServerErrorMiddleware, whose 413 and 500 a browser could otherwise not read.
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            # HEAD too: every GET resource answers it (api/http/methods.py), and a browser preflights
            # a HEAD that carries a token, then fails it unless the preflight is a 2xx.
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
        )
    # The requests the router never names a route for are labelled with the one it would have picked.
    app.add_middleware(RequestTelemetry, routes=served_routes(app, routers), tracer=tracer)
    # Outside the access line, which counts the time a large answer takes to go (api/http/slow_readers.py);
    # inside the request id, which its line about a client cut off carries.
    app.add_middleware(SlowReaders, timeout_seconds=settings.send_timeout_seconds)
    # The id reaches the logs and the response; nothing downstream reads it from the request headers.
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        update_request_header=False,
        validator=is_acceptable_request_id,
        generator=new_request_id,
    )
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, without a database or keys: the app is built, never started."""
    unused = SecretStr("unused-" + "x" * MIN_SECRET_LENGTH)
    settings = Settings.model_construct(
        database_url=SecretStr("postgresql://unused@/unused"), better_auth_secret=unused
    )
    return create_app(settings).openapi()
