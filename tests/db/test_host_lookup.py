"""A database host's name is looked up within DB_CONNECT_TIMEOUT_SECONDS, and looked up afresh once
a lookup is older than that: a lookup stuck in a resolver that has since recovered (its name server
back, the name added to /etc/hosts) must not hold every later connection of the worker with it.

The first test runs where no lookup is answered (tests/silent_name_server.py), as the worker's pool
would run them. A name that is not found is left out, as libpq leaves it out, and each host left keeps
its own port."""

import subprocess
import sys
import textwrap
from pathlib import Path

from pytest_postgresql.executors import NoopExecutor

from api.db.host_lookup import LookupBoundedConnection
from tests.support import cli_env

# Inside the namespace, as root there: the first lookup gets no answer; then /etc/hosts names the
# host, and the next connection's lookup, begun past the first one's connect_timeout, finds it.
_SCENARIO = textwrap.dedent(
    """
    import asyncio, shutil, subprocess, sys, time
    from psycopg.conninfo import conninfo_to_dict
    from api.db.host_lookup import HostLookupTimeout, looked_up_async

    params = conninfo_to_dict("host=db.todo-api.test port=5432 connect_timeout=2")

    async def main():
        started = time.monotonic()
        try:
            await looked_up_async(params)
        except HostLookupTimeout as error:
            print("first:", error, round(time.monotonic() - started, 1))
        subprocess.run([shutil.which("mount"), "--bind", sys.argv[1], "/etc/hosts"], check=True)
        started = time.monotonic()
        found = await looked_up_async(params)
        print("then:", found["hostaddr"], round(time.monotonic() - started, 1))

    asyncio.run(main())
    """
)


def test_a_name_the_resolver_answers_again_is_found_by_the_next_connection(
    tmp_path: Path, silent_name_server: list[str]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.7 db.todo-api.test\n")
    result = subprocess.run(
        [*silent_name_server, sys.executable, "-c", _SCENARIO, str(hosts)],
        env=cli_env(RES_OPTIONS="timeout:30 attempts:5"),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, then = result.stdout.splitlines()
    assert first.startswith("first: the lookup of host 'db.todo-api.test' got no answer within 2 s"), first
    assert float(first.rsplit(" ", 1)[1]) < 3
    assert then.startswith("then: 192.0.2.7 "), then
    assert float(then.rsplit(" ", 1)[1]) < 1


def test_a_host_whose_name_is_not_found_is_skipped_and_the_next_is_reached_at_its_own_port(
    postgres_server: NoopExecutor,
) -> None:
    """A DATABASE_URL may list hosts with a port each (a primary and its replicas). libpq skips a
    host whose name is not found (a retired replica) and connects to the next at that host's port:
    the lookup done here must do the same, or `migrate`, `policies` and `serve` cannot connect at all
    while psql can ("could not match 2 port numbers to 1 hosts" once the unfound name was left out)."""
    conninfo = (
        f"host=retired-replica.invalid,{postgres_server.host} port=5999,{postgres_server.port}"
        " dbname=postgres user=postgres connect_timeout=5"
    )
    with LookupBoundedConnection.connect(conninfo) as connection:
        assert connection.execute("select current_setting('port')").fetchone() == (str(postgres_server.port),)
