"""The suite's forked CLI runs (tests/cli_forkserver.py) answer as the real command does: a test that
passes on a forked run would pass on `python -m api.ops.cli`."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import CLI, SECRET, cli_command, cli_env, free_port

CASES = [
    pytest.param(["--version"], {}, id="version"),
    pytest.param(["no-such-command"], {}, id="unknown-command"),
    pytest.param(["token"], {}, id="token-without-secret"),
    pytest.param(["policies"], {"DATABASE_URL": "closed"}, id="policies-closed-port"),
    pytest.param(["serve", "--port", "0"], {"DATABASE_URL": "closed"}, id="serve-closed-port"),
    pytest.param(["migrate"], {"DATABASE_URL": "mysql://todo@db/todo"}, id="migrate-not-postgres"),
]


def _without_moment(text: str) -> str:
    """A log line's time and process id, which differ between any two runs."""
    return re.sub(r'"(time|pid)":[^,]+,', "", text)


@pytest.mark.parametrize(("arguments", "variables"), CASES)
def test_a_forked_run_answers_as_the_real_command(
    tmp_path: Path, arguments: list[str], variables: dict[str, str]
) -> None:
    if variables.get("DATABASE_URL") == "closed":
        variables = {**variables, "DATABASE_URL": f"postgresql://todo@127.0.0.1:{free_port()}/todo"}
    env = cli_env(BETTER_AUTH_SECRET=SECRET, **variables) if arguments[0] == "serve" else cli_env(**variables)
    forked_command = cli_command(env)
    assert forked_command != CLI, "the fork server is used for this environment"
    forked, real = (
        subprocess.run(
            [*command, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        for command in (forked_command, CLI)
    )
    assert forked.returncode == real.returncode, forked.stderr
    assert forked.stdout == real.stdout
    assert _without_moment(forked.stderr) == _without_moment(real.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_interpreter_would_start_differently_is_the_real_command() -> None:
    assert cli_command(cli_env(PYTHONWARNINGS="error")) == CLI
    assert cli_command(cli_env(LC_ALL="C")) == CLI
