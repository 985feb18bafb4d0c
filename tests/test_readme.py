"""The README cannot rot: every command in it is run, as written, by a test.

`test_every_readme_command_is_run_by_a_test` fails when a command is added to README.md that no test
runs; the tests it names take their commands from the README itself, so an edit there is what runs.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.readme_commands import README, commands_starting, copy_of_the_checkout, readme_commands
from tests.support import PROBE, cli_env, free_port

# Each README command, by how it starts, and where it runs.
RUN_BY = {
    "python3 -m venv .venv": "test_the_first_command_serves_and_every_curl_line_answers",
    ".ci/run": "CI itself: .ci/run is the command that runs these tests",
    "TOKEN=": "test_the_first_command_serves_and_every_curl_line_answers",
    "AUTH=": "test_the_first_command_serves_and_every_curl_line_answers",
    "curl ": "test_the_first_command_serves_and_every_curl_line_answers",
    "todo-api policies": "test_the_first_command_serves_and_every_curl_line_answers",
    "DATABASE_URL='postgresql+psycopg://": "tests/db/test_migrations.py, plain yoyo apply",
    ".venv/bin/uv build --wheel": "tests/test_installed_wheel.py, its `installed` fixture",
    "pip wheel --no-deps -w dist .": "tests/test_installed_wheel.py, its `installed` fixture",
    "pip install dist/todo_api-*.whl": "tests/test_installed_wheel.py, its `installed` fixture",
    'psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/': (
        "tests/db/test_sql_policy_tests.py"
    ),
}


def test_every_readme_command_is_run_by_a_test() -> None:
    unrun = [command for command in readme_commands() if not command.startswith(tuple(RUN_BY))]
    assert unrun == [], "README commands no test runs: add them to a test, and to RUN_BY"


def test_a_command_that_needs_bash_is_in_a_bash_block() -> None:
    """A block marked `sh` is copied into whatever sh is (dash on Debian), where `<(...)` is a syntax
    error."""
    sh_blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", README.read_text(), re.MULTILINE | re.DOTALL)
    assert [body for _, body in sh_blocks if "<(" in body] == []


def _environment(checkout: Path) -> dict[str, str]:
    """A newcomer's shell: nothing of this checkout's virtualenv or PYTHONPATH."""
    env = cli_env()
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    # Nor a ban on bytecode: where the suite runs with PYTHONDONTWRITEBYTECODE (.ci/run says why it is
    # set there), each of the README's processes (serve, its worker, token, policies) compiled every
    # library it imports from source again, in a virtualenv `uv sync` made without bytecode.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PATH"] = os.pathsep.join(
        part for part in env["PATH"].split(os.pathsep) if not part.startswith(str(Path(sys.prefix)))
    )
    return env


BASH = shutil.which("bash") or "/bin/bash"
_ANSWER_ENDS = "--- the answer of one README command ends here ---"


def _bash(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(sys.platform != "linux", reason="the README's shell is bash on Linux")
def test_the_first_command_serves_and_every_curl_line_answers(tmp_path: Path) -> None:
    checkout = copy_of_the_checkout(tmp_path / "todo-api")
    env = _environment(checkout)
    port = free_port()  # the README's port 8000 may be taken on a shared machine
    (first,) = commands_starting("python3 -m venv .venv")
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [BASH, "-c", f"{first} --port {port}"],
            cwd=checkout, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the first command did not serve:\n{log.read_text()}"
            try:
                if PROBE.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

        # The welcome text names the command as this install has it.
        assert "TOKEN=$(.venv/bin/todo-api token alice)" in log.read_text(), log.read_text()
        curls = [
            command.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for command in commands_starting("curl ")
        ]
        # Each curl's answer apart, so that each is held to what README's comment beside it says.
        script = [*commands_starting("TOKEN="), *commands_starting("AUTH=")]
        script += [f"{command}\necho; echo {_ANSWER_ENDS}" for command in curls]
        session = _bash("set -e\n" + "\n".join(script), cwd=checkout, env=env)
        assert session.returncode == 0, session.stderr
        answers = dict(zip(curls, session.stdout.split(_ANSWER_ENDS), strict=False))

        def answer_to(part: str) -> str:
            (answer,) = [answer for command, answer in answers.items() if part in command]
            return answer.strip()

        created = answer_to("-X POST").lower()
        assert "http/1.1 201" in created, created
        assert "location: /api/alice/tasks/1" in created, created
        listed = json.loads(answer_to(f"curl -s 127.0.0.1:{port}/api/alice/tasks -H"))
        assert [(task["id"], task["title"]) for task in listed] == [(1, "Buy milk")], listed
        assert json.loads(answer_to("-X PATCH"))["completed"] is True
        updated = json.loads(answer_to("-X PUT"))
        assert (updated["title"], updated["description"], updated["completed"]) == (
            "Buy oat milk",
            "two litres",
            True,
        ), "other fields keep their value"
        found = json.loads(answer_to("?status=completed&q=milk&sort=title"))
        assert [task["title"] for task in found] == ["Buy oat milk"], found
        assert "http/1.1 204" in answer_to("-X DELETE").lower()
        assert json.loads(answer_to("/api/bob/tasks"))["status"] == 403

        for audit in commands_starting("todo-api policies"):  # the DBA's, on the installed command
            env_with_venv = {**env, "PATH": f"{checkout / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"}
            result = _bash(audit, cwd=checkout, env=env_with_venv)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
            server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
