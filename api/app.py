"""The app factory: assembles settings, auth, database, middleware and routes. Nothing else."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.auth import Authenticator, SharedSecretVerifier, TokenVerifier
from api.db import create_engine
from api.isolation import ensure_isolation
from api.log import configure_logging
from api.problems import document_problem_media_type, install_problem_handlers
from api.routes import health, tasks
from api.settings import Settings


def build_authenticator(settings: Settings) -> Authenticator:
    verifiers: dict[str, TokenVerifier] = {}
    if settings.better_auth_secret is not None:
        shared_secret = SharedSecretVerifier(
            settings.better_auth_secret.get_secret_value(),
            issuer=settings.better_auth_url,
            audience=settings.better_auth_url,
            leeway=settings.jwt_leeway_seconds,
        )
        verifiers.update(dict.fromkeys(shared_secret.algorithms, shared_secret))
    return Authenticator(verifiers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    engine = create_engine(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ensure_isolation(engine)
        yield
        await engine.dispose()

    app = FastAPI(
        title="todo-api",
        version="0.1.0",
        summary="A multi-user Todo API whose security lives in Postgres row-level security.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.authenticator = build_authenticator(settings)
    install_problem_handlers(app)
    document_problem_media_type(app)
    app.include_router(tasks.router)
    app.include_router(health.router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Location", "Link", "X-Request-ID"],
    )
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    return app
