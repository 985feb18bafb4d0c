"""The suite's forked CLI runs (tests/cli_forkserver.py) answer as the real command does: a test that
passes on a forked run would pass on `python -m api.ops.cli`."""

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import CLI, SECRET, cli_command, cli_env, free_port, serve_command, serve_process

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


# granian's, when a worker has not stopped within SHUTDOWN_GRACE_SECONDS: seen in CI from the forked
# run only, which stopped all the same (the same exit status, the same "shutdown completed"). How
# long a worker takes is not what this compares.
_WORKER_KILLED = re.compile(r"Killing worker-\d+ after it refused to gracefully stop")


def _records_but_requests(log: str) -> list[tuple[str, str, str]]:
    """What a served run logged, in any order, but for its access lines, the process ids, and a
    worker killed for stopping slowly."""
    records = [json.loads(line) for line in log.splitlines()]
    return sorted(
        (record["level"], record["name"], re.sub(r"PID: \d+", "PID: N", record["message"]))
        for record in records
        if record["name"] != "api.access" and not _WORKER_KILLED.fullmatch(record["message"])
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_forked_serve_stops_on_a_signal_to_its_command_as_the_real_one_does(
    api_db_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """What `serve_process` sends on the way out (SIGTERM), what Ctrl-C and a closed terminal send: the
    forked run must get it and stop as the real command does, not be killed with its client."""
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET)
    port = free_port()
    stopped = {}
    for kind, command in (("forked", serve_command(env)), ("real", [*CLI, "serve"])):
        output = tmp_path / f"{kind}.log"
        with serve_process(command, cwd=tmp_path, env=env, output=output, port=port) as (_, process):
            process.send_signal(signum)
            stopped[kind] = (process.wait(timeout=60), _records_but_requests(output.read_text()))
    assert serve_command(env) != [*CLI, "serve"], "the fork server is used for this environment"
    # Said with the records only one run wrote: pytest cuts the two lists before where they differ.
    forked, real = stopped["forked"][1], stopped["real"][1]
    only_one = sorted(set(forked) ^ set(real))
    assert stopped["forked"] == stopped["real"], f"written by one run only: {only_one}"
    assert ("INFO", "_granian", "Granian shutdown completed, see ya!") in stopped["forked"][1]
