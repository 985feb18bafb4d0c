"""`todo-api serve | migrate | token`, run as a newcomer would: real processes, real Postgres."""

import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import psutil
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor

from api import __version__
from api.db.sql_files import EXPECTED_REACH
from api.ops.embedded import development_secret
from tests.support import (
    CLI,
    LOGIN_ROLE,
    SECRET,
    as_role,
    cli_env,
    free_port,
    refusal,
    run_cli,
    serve_command,
    serve_process,
    wait_until_it_waits_for,
)


@pytest.fixture
def embedded_api(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str], Path]]:
    data_dir, output = tmp_path / "data", tmp_path / "serve.log"
    command = [*CLI, "serve", "--data-dir", str(data_dir)]
    with serve_process(command, cwd=tmp_path, env=cli_env(), output=output) as (base_url, process):
        yield base_url, data_dir, process, output


def _postgres_running(pgdata: Path) -> bool:
    return any(
        proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or [])
        for proc in psutil.process_iter(attrs=["name", "cmdline"])
    )


def test_serve_with_no_database_url_runs_the_embedded_database_end_to_end(
    embedded_api: tuple[str, Path, subprocess.Popen[str], Path], tmp_path: Path
) -> None:
    base_url, data_dir, process, log = embedded_api
    # The welcome text's own command, as it names it: the executable as installed, with the data folder.
    hint = re.search(r"TOKEN=\$\(([^)]*)\)", log.read_text())
    assert hint is not None, log.read_text()
    command = shlex.split(hint.group(1))
    assert Path(command[0]).name == "todo-api", command
    # Bare when the virtualenv's bin is on PATH (a contributor's activated one; the PG 18 probe of stop 83).
    executable = (
        shutil.which(command[0], path=cli_env().get("PATH")) if command[0] == "todo-api" else command[0]
    )
    assert executable is not None, command
    assert Path(executable).is_file(), command
    token = subprocess.run(
        command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, check=True
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    created = httpx.post(f"{base_url}/api/alice/tasks", json={"title": "Try todo-api"}, headers=headers)
    listed = httpx.get(f"{base_url}/api/alice/tasks", headers=headers)

    assert created.status_code == 201
    preflight = httpx.options(
        f"{base_url}/api/alice/tasks",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers.get("access-control-allow-origin") == "http://localhost:3000", (
        "a Next.js app may call"
    )
    assert [task["title"] for task in listed.json()] == ["Try todo-api"]
    assert _postgres_running(data_dir / "pgdata")
    # Another user who could read the start lock could hold it, and every start and stop of the
    # folder with it (the local users' probe of stop 82).
    assert (data_dir / "start.lock").stat().st_mode & 0o077 == 0, "only its owner may take the start lock"

    # An open event stream ends when the server is told to stop, rather than keep the worker alive.
    with httpx.stream("GET", f"{base_url}/api/alice/events", headers=headers, timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("id: ")
        process.send_signal(signal.SIGTERM)
        assert [line for line in lines if line and not line.startswith(":")] == []
    process.wait(timeout=60)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "http://localhost:3000" in output, "and which browser origins may call it"
    assert not _postgres_running(data_dir / "pgdata"), "SIGTERM stops the embedded Postgres too"


@pytest.fixture(scope="module")
def quota_of_one_api(
    copy_made_data_dir: Callable[[Path], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """`todo-api serve` on a made embedded database (which the tests of what its Postgres logs need, not
    its first start) with a quota of one task per user, and that folder: shared by those tests, each
    writing as a user of its own, each looking in the log for titles of its own."""
    work = tmp_path_factory.mktemp("quota-of-one")
    data_dir = copy_made_data_dir(work / "data")
    command = [*CLI, "serve", "--data-dir", str(data_dir)]
    env = cli_env(MAX_TASKS_PER_USER="1")
    with serve_process(command, cwd=work, env=env, output=work / "serve.log") as (base_url, _):
        yield base_url, data_dir


def _as(user_id: str, data_dir: Path) -> dict[str, str]:
    """Headers of a request as `user_id`, signed with the embedded database's development secret."""
    token = jwt.encode({"sub": user_id, "exp": 4102444800}, development_secret(data_dir), "HS256")
    return {"Authorization": f"Bearer {token}"}


def test_the_embedded_database_keeps_a_refused_writes_content_out_of_its_log(
    quota_of_one_api: tuple[str, Path],
) -> None:
    """Postgres logs a failed statement's text, and the API's carry their values: a create refused by
    the task quota would have left its title in pgdata/log."""
    base_url, data_dir = quota_of_one_api
    headers = _as("alice", data_dir)
    url = f"{base_url}/api/alice/tasks"
    assert httpx.post(url, json={"title": "first"}, headers=headers).status_code == 201
    refused = httpx.post(url, json={"title": "private-title-7f3a"}, headers=headers)
    assert refused.json()["type"] == "urn:todo-api:problem:task-limit-reached"
    log = (data_dir / "pgdata" / "log").read_text()
    assert "ERROR:  user alice already has the 1 tasks allowed" in log, "the refusal itself is logged"
    assert "private-title-7f3a" not in log


def test_the_embedded_database_keeps_a_deadlocked_writes_content_out_of_its_log(
    quota_of_one_api: tuple[str, Path],
) -> None:
    """Postgres's report of a deadlock quotes the statement of every session in it, whatever
    log_min_error_statement says: a rename caught in one with a DBA's transaction left its new title
    in pgdata/log."""
    base_url, data_dir = quota_of_one_api
    headers = _as("bob", data_dir)
    with ThreadPoolExecutor(1) as sender:
        task = httpx.post(f"{base_url}/api/bob/tasks", json={"title": "first"}, headers=headers).json()
        socket_dir = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[4]
        with psycopg.connect(f"postgresql://postgres@/todo?host={socket_dir}") as dba:
            # The DBA's session looks for the deadlock first: the API's write goes on once it is over.
            dba.execute("set deadlock_timeout = '100ms'")
            # Held, the row of the user's event count stops the rename in its trigger, holding the task.
            dba.execute("select 1 from app.task_event_counts where user_id = 'bob' for update")
            rename = sender.submit(
                httpx.put,
                f"{base_url}/api/bob/tasks/{task['id']}",
                json={"title": "private-title-5c1e"},
                headers=headers,
                timeout=30,
            )
            wait_until_it_waits_for(dba, rename)
            with pytest.raises(psycopg.errors.DeadlockDetected):
                dba.execute("update tasks set completed = completed where id = %s", [task["id"]])
            dba.rollback()
            renamed = rename.result()
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["title"] == "private-title-5c1e"
    log = (data_dir / "pgdata" / "log").read_text()
    assert "deadlock detected" in log, "the deadlock itself is logged"
    assert "private-title-5c1e" not in log


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (("",), "1 to 255 characters"),
        (("x" * 256,), "1 to 255 characters"),
        (("a/b",), "one URL path segment"),
        (("..",), "one URL path segment"),
        (("alice", "--ttl", "99999999999999"), "100 years"),
    ],
)
def test_token_refuses_to_mint_what_the_api_would_refuse(
    tmp_path: Path, arguments: tuple[str, ...], reason: str
) -> None:
    result = run_cli("token", *arguments, cwd=tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert reason in result.stderr


def test_token_signs_with_the_remembered_secret_of_the_embedded_database_there(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secret = development_secret(data_dir)  # as `serve` makes it, the first time
    assert development_secret(data_dir) == secret, "made once, then remembered"
    first = run_cli("token", "alice", "--data-dir", str(data_dir), cwd=tmp_path).stdout.strip()
    second = run_cli("token", "bob", "--data-dir", str(data_dir), cwd=tmp_path).stdout.strip()
    assert jwt.decode(first, secret, algorithms=["HS256"])["sub"] == "alice"
    assert jwt.decode(second, secret, algorithms=["HS256"])["sub"] == "bob"
    assert (data_dir / "dev-secret").stat().st_mode & 0o077 == 0, "only its owner may read the secret"


def test_token_uses_the_configured_secret_and_claims(tmp_path: Path) -> None:
    result = run_cli(
        "token", "u1", "--email", "u1@example.com", "--name", "U One", "--ttl", "60",
        cwd=tmp_path, BETTER_AUTH_SECRET=SECRET,
    )  # fmt: skip
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["email"], claims["name"]) == ("u1", "u1@example.com", "U One")
    assert claims["exp"] - claims["iat"] == 60


def test_migrate_sets_up_an_external_database(empty_db_url: str, tmp_path: Path) -> None:
    # No secret: migrating (like auditing) needs no way to verify tokens, only serving does.
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=empty_db_url)
    assert result.returncode == 0, result.stderr
    assert "0002_tasks_schema" in result.stdout
    with psycopg.connect(empty_db_url) as connection:
        tables = connection.execute("select relname from pg_class where relrowsecurity order by 1").fetchall()
    assert tables == [("idempotency_keys",), ("task_event_purges",), ("task_events",), ("tasks",), ("users",)]


def test_serve_migrate_migrates_as_migration_database_url_and_serves_as_database_url(
    empty_db_url: str, migrated_template: NoopExecutor, tmp_path: Path
) -> None:
    """The deployment README's pair of URLs: the owner migrates, the login role that owns nothing
    serves. `serve --migrate` used to migrate as DATABASE_URL's role, which may not change the schema."""
    env = cli_env(
        MIGRATION_DATABASE_URL=empty_db_url, DATABASE_URL=as_role(empty_db_url), BETTER_AUTH_SECRET=SECRET
    )
    command = serve_command(env, "--migrate")
    with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (base_url, _):
        assert httpx.get(f"{base_url}/readyz").status_code == 200
    assert "may not change the schema" not in (tmp_path / "serve.log").read_text()
    with psycopg.connect(empty_db_url) as connection:
        tasks = "select tableowner::text from pg_tables where tablename = 'tasks'"
        owner = connection.execute(tasks).fetchone()
    assert owner == (LOGIN_ROLE,), "migrated by the schema's owner, not by the role that serves"


def test_serve_refuses_a_database_that_is_not_migrated(empty_db_url: str, tmp_path: Path) -> None:
    assert "public.tasks does not exist" in refusal(empty_db_url, tmp_path)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"BETTER_AUTH_SECRET": "too-short"}, "at least 32 characters"),
        ({"DATABASE_URL": "postgresql://nobody@/nowhere"}, "BETTER_AUTH_SECRET is required to serve"),
        ({"DATABASE_URL": "mysql://x@y/z", "BETTER_AUTH_SECRET": SECRET}, "must start with postgresql://"),
    ],
)
def test_serve_refuses_bad_configuration(tmp_path: Path, variables: dict[str, str], message: str) -> None:
    result = run_cli("serve", "--port", str(free_port()), cwd=tmp_path, **variables)
    assert result.returncode != 0
    assert message in result.stderr


def test_serve_listens_on_a_host_name_and_announces_it(migrated_db_url: str, tmp_path: Path) -> None:
    """The HTTP server listens on an address, not a name: serve resolves the name the user gave, as
    its check of the port did, and says where it serves by that name."""
    log, port = tmp_path / "serve.log", free_port()
    env = cli_env(DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET)
    command = serve_command(env, "--host", "localhost")
    with serve_process(command, cwd=tmp_path, env=env, output=log, port=port, host="localhost") as (
        base_url,
        process,
    ):
        assert httpx.get(f"{base_url}/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert f"serving on http://localhost:{port} " in output, output


def test_serve_on_port_0_announces_the_port_it_serves_on(migrated_db_url: str, tmp_path: Path) -> None:
    """Port 0 asks for any free port: the announcement names the one taken, never :0."""
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*CLI, "serve", "--port", "0"], cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, text=True,
            env=cli_env(DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET),
        )  # fmt: skip
    try:
        while not (announced := re.search(r"serving on (http://127\.0\.0\.1:(\d+)) ", log.read_text())):
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        base_url, port = announced.group(1), int(announced.group(2))
        assert port != 0, log.read_text()
        assert httpx.get(f"{base_url}/readyz").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()


def test_serve_announces_an_ipv6_address_as_a_url(migrated_db_url: str, tmp_path: Path) -> None:
    log, port = tmp_path / "serve.log", free_port()
    env = cli_env(DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET)
    command = serve_command(env, "--host", "::1")
    with serve_process(command, cwd=tmp_path, env=env, output=log, port=port, host="::1") as (base_url, _):
        assert httpx.get(f"{base_url}/healthz").status_code == 200
    assert f"serving on http://[::1]:{port} (docs: http://[::1]:{port}/docs)" in log.read_text()


def test_bare_todo_api_prints_its_help(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "token", "policies"):
        assert command in result.stdout


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"todo-api {__version__}")


@pytest.mark.parametrize(
    "options",
    [("--json",), ("--data-dir", "data"), ("--json", "--data-dir", ".")],
    ids=["json", "data-dir", "both"],
)
def test_write_expected_refuses_the_options_it_would_ignore(tmp_path: Path, options: tuple[str, ...]) -> None:
    """It reads no database and prints no report: `--data-dir` and `--json` were ignored in silence,
    and the checkout's file rewritten from a fresh database all the same."""
    before = EXPECTED_REACH.stat().st_mtime_ns
    result = run_cli("policies", "--write-expected", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--write-expected takes neither --json nor --data-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert EXPECTED_REACH.stat().st_mtime_ns == before, "nothing was written"


@pytest.mark.parametrize("command", ["serve", "migrate", "token", "policies"])
def test_every_option_says_what_it_does_and_its_default(tmp_path: Path, command: str) -> None:
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    options = [o for o in re.split(r"\n(?=  -)", result.stdout.split("options:", 1)[1]) if o.strip()]
    assert len(options) >= 2
    for option in options:
        if option.strip().startswith("-h, --help"):
            continue
        assert "(default: " in " ".join(option.split()), option
