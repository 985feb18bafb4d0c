"""The app factory: assembles settings, auth, database, middleware and routes. Nothing else."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.auth import Authenticator, ClaimChecks, JwksVerifier, SharedSecretVerifier, TokenVerifier
from api.body_limit import BodySizeLimit
from api.db import Database
from api.dependencies import document_bearer_scheme
from api.isolation import ensure_isolation
from api.jwks import JwksKeySet
from api.log import configure_logging
from api.problems import document_problem_media_type, install_problem_handlers
from api.routes import health, tasks
from api.settings import Settings


def build_authenticator(settings: Settings) -> Authenticator:
    """A verifier per configured key source; each accepts only its own algorithm family."""
    checks = ClaimChecks(
        issuer=settings.expected_issuer,
        audience=settings.expected_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    if missing := settings.missing_token_source():
        raise ValueError(missing)
    verifiers: list[TokenVerifier] = []
    if settings.better_auth_secret is not None:
        verifiers.append(SharedSecretVerifier(settings.better_auth_secret.get_secret_value(), checks))
    if settings.jwks_url is not None:
        key_set = JwksKeySet(settings.jwks_url, refetch_cooldown=settings.jwks_refetch_cooldown_seconds)
        verifiers.append(JwksVerifier(key_set, checks))
    return Authenticator(verifiers)


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
        version="0.1.0",
        summary="A multi-user Todo API whose security lives in Postgres row-level security.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry looks for a configured provider on every request: 21 Python
        # calls of a get's 398 outside the database. We ship no OpenTelemetry SDK, so it never finds one.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.database = database
    app.state.authenticator = authenticator
    install_problem_handlers(app)
    document_problem_media_type(app)
    document_bearer_scheme(app)
    # The routers' routes join the app's own list, ahead of the docs pages, rather than through
    # `include_router`: FastAPI wraps an included router in a layer that it matches twice on every
    # request, 175 of a get's 573 Python calls outside the database (issue 5). The routes already
    # carry everything their router gives them: prefix, tags, responses and route class.
    app.router.routes[:0] = [*tasks.router.routes, *health.router.routes]
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
