"""Connections, and the one transaction helper every route uses.

The API logs in as an ordinary role (on Neon one with BYPASSRLS), so every statement must run
after switching to todo_app. `Database.transaction` is the only way routes reach the database:
it begins a transaction (READ ONLY for reads), switches role, sets `app.user_id` and bounds the
statement time, all with transaction-scoped `set_config(..., true)` (a plain SET would outlive
the request on a pooled connection), runs the caller's statements and commits. When the block
raises, the transaction is rolled back and the settings vanish with it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import bindparam

from api.database_url import libpq_url
from api.settings import Settings

APP_ROLE = "todo_app"

_ACT_AS_USER = select(
    func.set_config("role", APP_ROLE, True),
    func.set_config("app.user_id", bindparam("user_id"), True),
    func.set_config("statement_timeout", bindparam("statement_timeout"), True),
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


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    statement_timeout_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        return cls(create_engine(settings), settings.db_statement_timeout_ms)

    @asynccontextmanager
    async def transaction(self, user_id: str, *, read_only: bool) -> AsyncIterator[AsyncConnection]:
        """A transaction acting as `user_id`: the only way to run a query for a request."""
        async with self.engine.connect() as connection:
            if read_only:
                await connection.execution_options(postgresql_readonly=True)
            await connection.execute(
                _ACT_AS_USER, {"user_id": user_id, "statement_timeout": str(self.statement_timeout_ms)}
            )
            yield connection
            await connection.commit()

    async def ping(self) -> None:
        """Reach the server and back, touching no table: for readiness checks."""
        async with self.engine.connect() as connection:
            await connection.execute(text("select 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
