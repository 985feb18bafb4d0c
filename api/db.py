"""Connections, and the one transaction helper every route uses.

The API logs in as an ordinary role (on Neon one with BYPASSRLS), so every statement must run
after switching to todo_app. `user_transaction` is the only way routes reach the database: it
begins a transaction (READ ONLY for reads), switches role and sets `app.user_id` with
transaction-scoped `set_config(..., true)` (a plain SET would outlive the request on a pooled
connection), runs the caller's statements and commits. When the block raises, the transaction is
rolled back and the settings vanish with it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import bindparam

from api.database_url import libpq_url
from api.settings import Settings

APP_ROLE = "todo_app"

_ACT_AS_USER = select(
    func.set_config("role", APP_ROLE, True),
    func.set_config("app.user_id", bindparam("user_id"), True),
)


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is not set")
    conninfo = libpq_url(
        settings.database_url.get_secret_value(),
        connect_timeout=settings.db_connect_timeout_seconds,
        application_name="todo-api",
    )

    async def connect() -> psycopg.AsyncConnection[tuple[object, ...]]:
        return await psycopg.AsyncConnection.connect(
            conninfo, prepare_threshold=settings.db_prepare_threshold
        )

    return create_async_engine(
        "postgresql+psycopg://",
        async_creator=connect,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        # No pre-ping: it costs a round trip per request. A connection the server dropped is discarded
        # on the error that reveals it (that request gets a 503) and replaced on the next checkout.
        pool_recycle=1800,
    )


@asynccontextmanager
async def user_transaction(
    engine: AsyncEngine, user_id: str, *, read_only: bool
) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        if read_only:
            await connection.execution_options(postgresql_readonly=True)
        await connection.execute(_ACT_AS_USER, {"user_id": user_id})
        yield connection
        await connection.commit()
