"""The app factory: assembles settings, auth, database, middleware and routes. Nothing else."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import __version__
from api.auth.verification import build_authenticator
from api.db.database import Database
from api.db.isolation import ensure_isolation
from api.http import health
from api.http.body_limit import BodySizeLimit
from api.http.caller import document_bearer_scheme
from api.http.problems import document_problem_media_type, install_problem_handlers
from api.settings import Settings
from api.tasks import routes as tasks
from api.telemetry.logs import configure_logging

# Every router the API serves. A router left out of this list would answer 404 for all its routes;
# `tests/api/test_routers.py` fails when a module defines a router that is not here.
ROUTERS: tuple[APIRouter, ...] = (tasks.router, health.router)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    database = Database.from_settings(settings)
    authenticator = build_authenticator(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await database.open()
        try:
            await ensure_isolation(database)
            # Starts fetching Better Auth's keys in the background: an auth server that is briefly
            # down must not keep the API from starting.
            async with authenticator:
                yield
        finally:
            await database.close()

    app = FastAPI(
        title="todo-api",
        version=__version__,
        summary="A multi-user Todo API whose security lives in Postgres row-level security.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry looks for a configured provider on every request, and we
        # ship no SDK for it to find (bench/RESULTS.md, "Fourth session").
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.database = database
    app.state.authenticator = authenticator
    install_problem_handlers(app)
    document_problem_media_type(app)
    document_bearer_scheme(app)
    # The routers' routes join the app's own list, ahead of the docs pages, rather than through
    # `include_router`: FastAPI wraps an included router in a layer that it matches twice on every
    # request (bench/RESULTS.md, "Fourth session"). The routes already carry everything their router
    # gives them: prefix, tags, responses and route class.
    app.router.routes[:0] = [route for router in ROUTERS for route in router.routes]
    # Every middleware costs every request something; CORS is only there when a browser origin is
    # configured (without it, a cross-origin browser gets no CORS headers either way).
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Link", "X-Request-ID"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # The id reaches the logs and the response; nothing downstream reads it from the request headers.
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID", update_request_header=False)
    return app
