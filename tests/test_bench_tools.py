"""The benchmark tools bench/README.md names, run as a newcomer runs them: each must start, measure
what its name says and report it, on the suite's Postgres or on one of its own."""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

import bench.run
from api.db.sql_files import shipped_migrations
from api.tasks import queries
from bench import dataset, gc_cost, isolation_check, transaction_paths, trigger_cost
from bench.api_server import running_api
from bench.deletable import DeletablePool
from bench.pgbench import run_pgbench
from bench.postgres import BenchPostgres, embedded_postgres_server
from bench.scenarios import SCENARIOS
from bench.wrk import ensure_wrk, run_wrk
from tests.readme_commands import copy_of_the_checkout
from tests.support import PROJECT


def test_bench_transaction_paths_runs_every_way_each_preparing_what_its_name_says(
    migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    get = queries.get_task("alice", 5)
    # Fewer and shorter batches than the tool's: this checks that it runs, not what it measures.
    monkeypatch.setattr(transaction_paths, "_ROUNDS", 1)
    monkeypatch.setattr(transaction_paths, "_BATCH", 3)

    figures = asyncio.run(transaction_paths._cpu_us_per_request(migrated_db_url, get))
    assert list(figures) == [
        "one message",
        "one message, prepared",
        "pipelined",
        "pipelined and prepared",
        "one message, prepared, on libpq",
        "a bare `select 1`",
    ]

    async def prepared_by_requests() -> dict[str, list[str]]:
        found = {}
        for name, settings in transaction_paths._WAYS.items():
            way = transaction_paths._DatabaseRun(
                migrated_db_url, settings, prepares=name not in transaction_paths._NEVER_PREPARED
            )
            await way.open()
            try:
                for _ in range(3):
                    await way.send(get)
                async with way.database.pool.connection() as connection:
                    # Without the empty statement the pool's check of a new connection sends, before
                    # the way's first request; and without this query itself.
                    cursor = await connection.execute(
                        "select statement from pg_prepared_statements"
                        " where statement <> '' and statement not like '%pg_prepared_statements%'"
                    )
                    found[name] = [row["statement"] for row in await cursor.fetchall()]
            finally:
                await way.close()
        return found

    prepared = asyncio.run(prepared_by_requests())

    assert prepared["one message"] == [], prepared
    assert prepared["pipelined"] == [], prepared
    assert any("FROM public.tasks" in statement for statement in prepared["one message, prepared"]), prepared
    assert any("FROM public.tasks" in statement for statement in prepared["pipelined and prepared"]), prepared


def _wrk_or_skip() -> None:
    if shutil.which("wrk") is None and os.geteuid() != 0:
        pytest.skip("needs wrk, which the bench installs with apt-get only as root")


@pytest.fixture(scope="module")
def bench_postgres() -> Iterator[BenchPostgres]:
    """One Postgres as the tools start theirs, for the tests that run a tool's phases on one (each
    prepares its database afresh): a Postgres each cost an initdb, a start and a stop."""
    with embedded_postgres_server() as postgres:
        yield postgres


def test_bench_isolation_check_reports_each_kind_of_check_and_each_query(
    migrated_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two rounds on the suite's Postgres: this checks that it runs the check (which must find nothing)
    # and reads its backend's CPU, not what it measures.
    asyncio.run(isolation_check._measure(migrated_db_url, rounds=2))
    lines = capsys.readouterr().out.splitlines()
    for label in ("first on a new connection", "again on the same connection", *isolation_check._QUERIES):
        (row,) = [line for line in lines if line.startswith(f"| {label} | ")]
        cpu_ms = float(row.strip("| ").split(" | ")[1])
        assert cpu_ms >= 0, row


def test_bench_trigger_cost_compares_each_case_before_and_with_the_newest_migration(
    bench_postgres: BenchPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    # A few writes on each side: this checks that both databases are made and written to, and that the
    # one without the newest migration is at the migration before, not what the figures say.
    args = argparse.Namespace(rounds=2, batch=3, users=3, tasks_per_user=2)
    trigger_cost._measure(bench_postgres, args)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {case.name}" for case in trigger_cost._cases(2)]
    for row in rows:
        figures = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
        assert len(figures) == 3, row
        assert min(figures) > 0, row
    with psycopg.connect(bench_postgres.superuser_url("trigger_cost_0_before")) as database:
        applied = database.execute("select max(migration_id) from _yoyo_migration").fetchone()
    assert applied == (shipped_migrations()[-2],)


def test_bench_gc_cost_reports_the_serving_worker_s_collector(
    bench_postgres: BenchPostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _wrk_or_skip()
    monkeypatch.setattr(bench.run, "RESULTS_DIR", tmp_path)  # not the checkout's bench/results
    monkeypatch.setattr(gc_cost, "embedded_postgres_server", lambda: contextlib.nullcontext(bench_postgres))
    # The tool loads "small" (20,000 tasks, loaded, indexed and vacuumed before each scenario): this
    # checks what it reports of the worker, for which a few users' tasks serve as well.
    monkeypatch.setitem(dataset.SIZES, "small", dataset.Size("small", users=40, tasks_per_user=3))

    gc_cost.main(["--scenarios", "get", "--duration", "1", "--connections", "4"])

    rows = {
        cells[0]: cells[1:]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith(("| worker", "| ---"))
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    # The worker's threshold, as api/ops/collector.py sets it: not that of serve's own process, which
    # serves nothing and keeps CPython's.
    assert rows["api/ops/worker.py settings"][1] == "(7000, 10, 10)", rows
    assert rows["CPython defaults"][1] == "(700, 10, 10)", rows
    assert all(int(cells[0].replace(",", "")) > 0 for cells in rows.values()), rows


def test_bench_run_with_no_results_leaves_nothing_in_the_checkout_or_its_temporary_folder(
    tmp_path: Path,
) -> None:
    _wrk_or_skip()
    checkout = copy_of_the_checkout(tmp_path / "checkout")
    scratch = Path(tempfile.gettempdir())

    def run_folders() -> set[Path]:
        return set(scratch.glob("todo-api-bench-run-*"))

    before = run_folders()
    # The shortest run there is: this checks what it writes, not a figure.
    options = ["--users", "20", "--workers", "1", "--duration", "1", "--rounds", "1", "--warmup", "1"]
    load = ["--connections", "2", "--threads", "1", "--scenarios", "get"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", *options, *load, "--no-results"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| small | 1 | get |" in run.stdout, run.stdout[-3000:]
    assert not (checkout / "bench" / "results").exists(), list((checkout / "bench" / "results").rglob("*"))
    assert run_folders() <= before


def _deleted_from_the_pool(superuser_url: str, pool: DeletablePool) -> dict[str, int]:
    """How many of the pool's tasks are gone, and what the database shows of their deletion."""
    with psycopg.connect(superuser_url) as connection:
        row = connection.execute(
            """
            select %(size)s - (select count(*) from tasks where id between %(first)s and %(last)s),
                   (select count(*) from task_events where kind = 'task.deleted'),
                   (select count(*) from task_events as e
                    where e.task is not null and not exists (select from tasks as t where t.id = e.task_id)),
                   (select count(*) from task_events where task_id > %(last)s or task_id < %(first)s)
            """,
            {"size": pool.sample.count * pool.per_user, "first": pool.first_id, "last": pool.last_id},
        ).fetchone()
    assert row is not None
    gone, deletions, copies_of_gone_tasks, events_outside_the_pool = row
    return {
        "gone": gone,
        "task.deleted events": deletions,
        "events still carrying a deleted task": copies_of_gone_tasks,
        "events of tasks outside the pool": events_outside_the_pool,
    }


def test_the_delete_scenario_deletes_a_task_of_its_pool_with_every_request_on_every_side(
    bench_postgres: BenchPostgres, tmp_path: Path
) -> None:
    # A delete that found no task would answer 404 (or, in pgbench, delete nothing) and cost less than
    # one that deletes: every request counted must be a real delete of a task of its own.
    _wrk_or_skip()
    wrk = ensure_wrk()
    size = dataset.Size("small", users=40, tasks_per_user=3)
    connections, threads = 4, 2
    scenario = SCENARIOS["delete"]
    prepared = bench.run.prepare(bench_postgres, size, tmp_path, 10, {}, phase_seconds=1)
    superuser_url = bench_postgres.superuser_url(prepared.dbname)
    pool = prepared.deletable
    for server in ("api", "floor"):
        with running_api(
            prepared.url, prepared.secret, workers=1, run_dir=tmp_path, extra_env={}, server=server
        ) as api:
            bench.run.start_phase(superuser_url, prepared, scenario)
            result = run_wrk(
                wrk, api.base_url, scenario, prepared.users_file,
                connections=connections, threads=threads, duration=1,
            )  # fmt: skip
        found = _deleted_from_the_pool(superuser_url, pool)

        assert result.non_2xx == 0, (server, result)
        assert result.socket_errors == 0, (server, result)
        assert result.requests > 0, (server, result)
        # Each answer deleted a task; a request cut off at the end may have deleted one unanswered.
        assert result.requests <= found["gone"] <= result.requests + connections, (server, result, found)
        assert found["task.deleted events"] == found["gone"], (server, found)
        assert found["events still carrying a deleted task"] == 0, (server, found)
        assert found["events of tasks outside the pool"] == 0, (server, found)

    for protocol in bench.run.PGBENCH_PROTOCOLS:
        bench.run.start_phase(superuser_url, prepared, scenario)
        transactions = run_pgbench(
            bench_postgres, prepared.dbname, scenario, prepared.scripts_dir / protocol, prepared.sample, pool,
            clients=connections, threads=threads, duration=1, protocol=protocol,
        )  # fmt: skip
        found = _deleted_from_the_pool(superuser_url, pool)

        assert transactions.failed == 0, (protocol, transactions.output)
        assert transactions.transactions > 0, (protocol, transactions.output)
        # Two clients that took the same task would have deleted fewer tasks than they counted.
        assert found["gone"] == transactions.transactions, (protocol, transactions.transactions, found)
        assert found["task.deleted events"] == found["gone"], (protocol, found)
        assert found["events still carrying a deleted task"] == 0, (protocol, found)


def _exited(process: psutil.Process) -> bool:
    """Gone, or a zombie: a postmaster stopped by pg_ctl has exited, but it stays listed until init,
    its parent, reaps it (`is_running()` is true of a zombie: it failed this test once in a full .ci/run)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_bench_tool_stopped_by_a_signal_stops_its_postgres(signum: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="bench-signal-"))  # short: Postgres puts its socket there
    # Which tool does not matter: every one starts its Postgres with bench.postgres, whose handlers
    # are under test. This one imports the least before it starts it (not the whole app), and its
    # options keep it short should the signal miss.
    options = ["--workers", "1", "--seconds", "1", "--rounds", "1", "--searcher-tasks", "10"]
    tool = subprocess.Popen(
        [sys.executable, "-m", "bench.search_neighbour", *options],
        cwd=PROJECT,
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    postmaster: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 120
        while postmaster is None and time.monotonic() < deadline and tool.poll() is None:
            for pid_file in scratch.glob("todo-api-bench-*/pgdata/postmaster.pid"):
                with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
                    postmaster = psutil.Process(int(pid_file.read_text().splitlines()[0]))
            time.sleep(0.05)
        assert postmaster is not None, "the tool's Postgres did not start"

        tool.send_signal(signum)
        tool.wait(timeout=60)

        assert _exited(postmaster), "the tool left its Postgres running"
        assert not list(scratch.glob("todo-api-bench-*")), "the tool left its data folder"
    finally:
        tool.kill()
        tool.wait()
        if postmaster is not None and postmaster.is_running():
            postmaster.send_signal(signal.SIGINT)  # Postgres's fast shutdown
            postmaster.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


_TOOLS = sorted(path.stem for path in (PROJECT / "bench").glob("*.py") if "__main__" in path.read_text())

# Each tool run as `python -m` runs it (runpy, as `__main__`, with --help on its command line), all in
# one interpreter: a process each paid the same imports twelve times over. Its stdout is the tools'
# answers as JSON; its stderr names each tool as it starts, so a tool that takes --help for a run
# is named when the ceiling below stops it.
_HELP_OF_EVERY_TOOL = """
import contextlib, io, json, runpy, sys, traceback

answers = {}
for tool in sys.argv[1:]:
    print(f"bench.{tool} --help", file=sys.stderr, flush=True)
    sys.argv[1:] = ["--help"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(f"bench.{tool}", run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit:  # what the interpreter makes of it
            if exit.code is None or isinstance(exit.code, int):
                status = exit.code or 0
            else:
                print(exit.code, file=sys.stderr)
                status = 1
        except BaseException:
            traceback.print_exc()
            status = 1
    answers[tool] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
json.dump(answers, sys.__stdout__)
"""


@pytest.fixture(scope="module")
def help_of_every_tool() -> dict[str, dict[str, Any]]:
    try:
        run = subprocess.run(
            [sys.executable, "-c", _HELP_OF_EVERY_TOOL, *_TOOLS],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as hung:
        started = hung.stderr.decode() if isinstance(hung.stderr, bytes) else hung.stderr or ""
        pytest.fail(f"a tool took --help for a run; the last started: {started.splitlines()[-1:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    answers: dict[str, dict[str, Any]] = json.loads(run.stdout)
    return answers


@pytest.mark.parametrize("tool", _TOOLS)
def test_every_bench_tool_describes_itself_on_help_without_starting(
    tool: str, help_of_every_tool: dict[str, dict[str, Any]]
) -> None:
    # A tool with no parser took --help for a run of minutes, with a Postgres of its own.
    answer = help_of_every_tool[tool]
    assert answer["status"] == 0, answer["stderr"]
    assert answer["stdout"].startswith(f"usage: python -m bench.{tool}"), answer["stdout"][:300]


def test_the_report_says_how_many_users_the_load_was_spread_over_for_each_size() -> None:
    # A size with fewer users than --sample-users spreads the load over all of them (bench/sample.py).
    args = bench.run._parser().parse_args(["--size", "small", "--users", "20"])
    (load, *_) = bench.run._settings(args, bench.run._sizes(args))
    assert load.endswith("requests spread over 20 users (small)"), load


def test_the_peer_is_asked_only_the_scenarios_it_has_a_script_for() -> None:
    # The peer has no delete script: by default a run that drives it leaves the scenario out, and
    # asking for it stops the run before anything starts, not after minutes of the other scenarios.
    assert bench.run._scenarios(None, ["api", "floor"]) == list(SCENARIOS)
    assert bench.run._scenarios(None, ["api", "postgraphile"]) == [n for n in SCENARIOS if n != "delete"]
    with pytest.raises(SystemExit, match="no \\['delete'\\] scenario"):
        bench.run._scenarios(["get", "delete"], ["api", "postgraphile"])
