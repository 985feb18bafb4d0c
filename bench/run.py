"""One command: the API against pgbench running the same SQL, on one embedded Postgres.

    .venv/bin/python -m bench.run --size small --workers 1,2 --duration 5 --rounds 3 --connections 32

For each size: a fresh database, migrated and loaded; then for each worker count, the API started with
that many workers and, per scenario, wrk against the API and pgbench with the same transactions at the
same concurrency, alternating for --rounds rounds. One table at the end, written with the machine and
the command to bench/results/<time>/report.md (git-ignored); bench/RESULTS.md is curated by hand.
"""

import argparse
import dataclasses
import json
import secrets
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from api.ops.migrations import apply_migrations
from bench import dataset, postgraphile, report
from bench.api_server import SERVERS, RssSampler, RunningApi, running_api
from bench.cpu import CpuMeter
from bench.deletable import DeletablePool
from bench.explain import explain_list
from bench.pgbench import PgbenchResult, run_pgbench
from bench.pgbench_scripts import scripts
from bench.postgraphile.isolation import check_isolation
from bench.postgres import STOPPING_SIGNALS, BenchPostgres, embedded_postgres_server, stop_on_signal
from bench.sample import Sample
from bench.scenarios import SCENARIOS, Scenario
from bench.wrk import WrkResult, ensure_wrk, run_wrk, write_users_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # git-ignored: scripts, logs, raw results
# The database's best for each transaction: one simple-protocol message (what the API sends by
# default) or a pipeline of prepared statements, whichever pgbench runs faster.
PGBENCH_PROTOCOLS = ("simple", "prepared")
_TOKEN_TTL_SECONDS = 12 * 3600


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _workers(text: str) -> list[int]:
    return [int(item) for item in _comma_list(text)]


def _servers(text: str) -> list[str]:
    names = _comma_list(text)
    unknown = [name for name in names if name not in SERVERS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct servers from {list(SERVERS)}")
    return names


def _env_pair(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=_comma_list, default=["small"], help="small, large or both: small,large"
    )
    parser.add_argument("--users", type=int, help="override the size's number of users")
    parser.add_argument("--tasks-per-user", type=int, help="override the size's tasks per user")
    parser.add_argument(
        "--workers", type=_workers, default=[2], help="API workers, or a list: 1,2 (default 2)"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per round and per tool (default 5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="wrk and pgbench alternate this many times per scenario; medians are reported (default 3)",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections = pgbench clients (default 32)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads = pgbench jobs (default 2)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="seconds of wrk (list) on each server as it starts, before anything is timed (default 3)",
    )
    parser.add_argument(
        "--scenarios",
        type=_comma_list,
        help=f"default: {','.join(SCENARIOS)}, less those the peer has no script for when it is driven",
    )
    parser.add_argument(
        "--sample-users", type=int, default=1000, help="users with tokens to spread load over"
    )
    parser.add_argument(
        "--api-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an API setting, e.g. DB_POOL_SIZE=20 (repeatable); DB_PREPARE_THRESHOLD=N: pgbench -M prepared",
    )
    parser.add_argument(
        "--server",
        type=_servers,
        default=["api"],
        help="what wrk drives: the API (default), the stack's floor:"
        " bench/floor_server.py, with the API's database layer (floor), only select 1 (bare) or"
        " the floor's answers from plain FastAPI (fastapi),"
        " or the peer (postgraphile); a list such as api,postgraphile runs them all, in turn each round",
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="write nothing in bench/results/: the run's files go to a temporary folder, removed at its end",
    )
    parser.add_argument("--note", action="append", default=[], help="a line to add under the run's table")
    return parser


def _scenarios(asked: list[str] | None, servers: list[str]) -> list[str]:
    """The scenarios to run: those asked, or every one the servers driven can be asked (the peer
    has no delete); asking the peer one it has no script for stops the run before it starts."""
    peer = "postgraphile" in servers
    if asked is None:
        return [name for name in SCENARIOS if not peer or postgraphile.has_scenario(name)]
    unknown = [name for name in asked if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"bench: unknown scenario {unknown}; choose from {list(SCENARIOS)}")
    not_for_peer = [name for name in asked if peer and not postgraphile.has_scenario(name)]
    if not_for_peer:
        raise SystemExit(f"bench: the peer (postgraphile) has no {not_for_peer} scenario; leave it out")
    return asked


def _sizes(args: argparse.Namespace) -> list[dataset.Size]:
    unknown = [name for name in args.size if name not in dataset.SIZES]
    if unknown:
        raise SystemExit(f"bench: unknown size {unknown}; choose from {list(dataset.SIZES)}")
    sizes = [dataset.SIZES[name] for name in args.size]
    if args.users or args.tasks_per_user:
        if len(sizes) != 1:
            raise SystemExit("bench: --users and --tasks-per-user apply to a single --size")
        base = sizes[0]
        sizes = [
            dataset.Size(base.name, args.users or base.users, args.tasks_per_user or base.tasks_per_user)
        ]
    return sizes


@dataclass(frozen=True)
class Prepared:
    """A loaded database, and the users (with tokens) and pgbench scripts to drive it with."""

    dbname: str
    url: str
    secret: str
    sample: Sample
    deletable: DeletablePool
    users_file: Path
    scripts_dir: Path


def prepare(
    postgres: BenchPostgres,
    size: dataset.Size,
    run_dir: Path,
    sample_users: int,
    api_env: dict[str, str],
    *,
    phase_seconds: int = 60,
) -> Prepared:
    """The database loaded, with what drives it; the delete scenario's pool is sized for phases of
    `phase_seconds`."""
    dbname = f"bench_{size.name}"
    print(f"bench: {size.name}: {size.users:,} users x {size.tasks_per_user} tasks", flush=True)
    url = postgres.create_database(dbname)
    apply_migrations(url)
    dataset.load(postgres.superuser_url(dbname), size, progress=lambda line: print(line, flush=True))
    timeout = api_env.get("DB_STATEMENT_TIMEOUT_MS")
    scripts_dir = run_dir / "pgbench"
    # Both ways to send a transaction; the ceiling is whichever pgbench runs faster (see below).
    for protocol in PGBENCH_PROTOCOLS:
        (scripts_dir / protocol).mkdir(parents=True, exist_ok=True)
        generated = scripts(int(timeout) if timeout else None, prepared=protocol == "prepared")
        for name, text in generated.items():
            (scripts_dir / protocol / f"{name}.sql").write_text(text)
    sample = Sample.of(size, sample_users)
    deletable = DeletablePool.for_phases_of(sample, phase_seconds)
    users_file = run_dir / f"users-{size.name}.lua"
    secret = secrets.token_urlsafe(48)
    write_users_file(users_file, sample, secret, _TOKEN_TTL_SECONDS, deletable)
    return Prepared(dbname, url, secret, sample, deletable, users_file, scripts_dir)


def start_phase(superuser_url: str, prepared: Prepared, scenario: Scenario) -> None:
    """Back to the loaded data (see `dataset.restore`), with the pool of tasks to delete when the
    scenario deletes."""
    dataset.restore(superuser_url, prepared.sample.size)
    if scenario.deletes:
        prepared.deletable.add(superuser_url)


def new_run_dir() -> Path:
    run_dir = RESULTS_DIR / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True)
    return run_dir


def _explain(prepared: Prepared, size: dataset.Size) -> list[str]:
    user_number = prepared.sample.user_numbers()[prepared.sample.count // 2]
    verdicts, details = [], []
    for plan in explain_list(prepared.url, user_number):
        print(f"bench: list query on {size.name} under RLS, {plan.verdict}:\n{plan.text}", flush=True)
        verdicts.append(f"- list query on {size.name} (user {user_number}, as todo_app), {plan.verdict}")
        details += ["", f"{size.name}, {plan.variant}:", "", "```", plan.text, "```"]
    return [*verdicts, "", "<details><summary>the plans</summary>", *details, "", "</details>", ""]


def _bench_size(
    postgres: BenchPostgres,
    size: dataset.Size,
    args: argparse.Namespace,
    wrk: str,
    run_dir: Path,
    plans: list[str],
) -> list[report.Row]:
    api_env = dict(args.api_env)
    prepared = prepare(postgres, size, run_dir, args.sample_users, api_env, phase_seconds=args.duration)
    plans += _explain(prepared, size)
    dbname, url, secret = prepared.dbname, prepared.url, prepared.secret
    superuser_url = postgres.superuser_url(dbname)
    sample, users_file, scripts_dir = prepared.sample, prepared.users_file, prepared.scripts_dir

    rows = []
    load = {"connections": args.connections, "threads": args.threads, "duration": args.duration}
    for workers in args.workers:
        with ExitStack() as stack:
            servers: dict[str, RunningApi] = {}
            for server in args.server:
                api = stack.enter_context(
                    running_api(
                        url, secret, workers=workers, run_dir=run_dir, extra_env=api_env, server=server
                    )
                )
                if server == "postgraphile":
                    check_isolation(api.base_url, secret, superuser_url, size.tasks_per_user)
                warmup = {**load, "duration": args.warmup}
                run_wrk(wrk, api.base_url, _asked_of(server, SCENARIOS["list"]), users_file, **warmup)
                servers[server] = api
            workers_of = {server: api.worker_processes() for server, api in servers.items()}
            for name in args.scenarios:
                https: dict[str, list[WrkResult]] = {server: [] for server in servers}
                databases: dict[str, list[PgbenchResult]] = {protocol: [] for protocol in PGBENCH_PROTOCOLS}
                # The sides alternate in short rounds, so that all see the same neighbours; each
                # figure is the median of its rounds.
                with ExitStack() as sampling:
                    rss = {server: sampling.enter_context(RssSampler(api)) for server, api in servers.items()}
                    api_cpu = {server: CpuMeter(postgres.pgdata, workers_of[server]) for server in servers}
                    pgbench_cpu = {protocol: CpuMeter(postgres.pgdata, []) for protocol in PGBENCH_PROTOCOLS}
                    for _ in range(args.rounds):
                        for server, api in servers.items():
                            # Each phase starts from the loaded data: creates would otherwise
                            # lengthen every list measured after them.
                            start_phase(superuser_url, prepared, SCENARIOS[name])
                            with api_cpu[server]:
                                scenario = _asked_of(server, SCENARIOS[name])
                                https[server].append(run_wrk(wrk, api.base_url, scenario, users_file, **load))
                        for protocol in PGBENCH_PROTOCOLS:
                            start_phase(superuser_url, prepared, SCENARIOS[name])
                            with pgbench_cpu[protocol]:
                                databases[protocol].append(
                                    run_pgbench(
                                        postgres,
                                        dbname,
                                        SCENARIOS[name],
                                        scripts_dir / protocol,
                                        sample,
                                        prepared.deletable,
                                        clients=args.connections,
                                        threads=args.threads,
                                        duration=args.duration,
                                        protocol=protocol,
                                    )
                                )
                best = max(PGBENCH_PROTOCOLS, key=lambda protocol: median(r.tps for r in databases[protocol]))
                for server in servers:
                    row = report.Row(
                        size=size.name,
                        workers=workers,
                        scenario=_row_label(server, name, args.server),
                        api_rps=median(http.requests_per_second for http in https[server]),
                        p50_ms=median(http.p50_us for http in https[server]) / 1000,
                        p99_ms=median(http.p99_us for http in https[server]) / 1000,
                        non_2xx=sum(http.non_2xx for http in https[server]),
                        socket_errors=sum(http.socket_errors + http.timeouts for http in https[server]),
                        pgbench_tps=median(database.tps for database in databases[best]),
                        pgbench_protocol=best,
                        pgbench_failed=sum(
                            database.failed for results in databases.values() for database in results
                        ),
                        peak_rss_mb=rss[server].peak_mb(),
                        api_cpu=api_cpu[server].per_unit(sum(http.requests for http in https[server])),
                        pgbench_cpu=pgbench_cpu[best].per_unit(
                            sum(database.transactions for database in databases[best])
                        ),
                    )
                    rows.append(row)
                    statuses = [http.statuses for http in https[server] if http.statuses]
                    shown = f" statuses: {statuses}" if statuses else ""
                    print(report.table([row])[-1] + shown, flush=True)
    return rows


def _asked_of(server: str, scenario: Scenario) -> Scenario:
    """The scenario's wrk script for this server: the peer is asked in GraphQL, the others in REST."""
    return postgraphile.peer_scenario(scenario) if server == "postgraphile" else scenario


def _row_label(server: str, scenario: str, servers: list[str]) -> str:
    """The table's scenario cell: the server is named when a run drives more than one."""
    return scenario if len(servers) == 1 else f"{scenario} ({server})"


def peer_ratios(rows: list[report.Row], servers: list[str]) -> list[str]:
    """API req/s over PostGraphile req/s, per scenario, size and worker count, when both ran."""
    if not {"api", "postgraphile"} <= set(servers):
        return []
    rps = {(row.size, row.workers, row.scenario): row.api_rps for row in rows}
    lines = []
    for (size, workers, label), api_rps in rps.items():
        for scenario in SCENARIOS:
            peer_rps = rps.get((size, workers, _row_label("postgraphile", scenario, servers)))
            if label == _row_label("api", scenario, servers) and peer_rps:
                lines.append(
                    f"- API/PostGraphile, {scenario}, {size}, {workers} worker(s):"
                    f" {api_rps:,.0f} / {peer_rps:,.0f} req/s = **{api_rps / peer_rps:.2f}**"
                )
    return lines


def _settings(args: argparse.Namespace, sizes: list[dataset.Size]) -> list[str]:
    """The report's lines on how the run was made."""
    settings = [
        f"- Load: {args.connections} connections (wrk) = clients (pgbench),"
        f" {args.threads} threads = jobs, {args.rounds} alternating rounds of {args.duration} s"
        f" per tool per scenario (medians); requests spread over"
        # A size with fewer users spreads the load over all of them (bench/sample.py).
        + "; ".join(f" {Sample.of(s, args.sample_users).count} users ({s.name})" for s in sizes),
        "- Sizes: " + "; ".join(f"{s.name} = {s.users:,} users x {s.tasks_per_user} tasks" for s in sizes),
    ]
    if args.server != ["api"]:
        driven = ", ".join(f"`{server}`" for server in args.server)
        settings.append(f"- Servers: {driven}, driven in turn each round")
    if args.api_env:
        settings.append("- API settings: " + ", ".join(f"`{name}={value}`" for name, value in args.api_env))
    return settings


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.scenarios = _scenarios(args.scenarios, args.server)
    sizes = _sizes(args)
    for signum in STOPPING_SIGNALS:  # from here on: npm ci and apt-get too
        signal.signal(signum, stop_on_signal)
    wrk = ensure_wrk()
    if "postgraphile" in args.server:
        postgraphile.ensure_installed()
    with ExitStack() as scratch:
        if args.no_results:
            # Nothing in the checkout: the run's scripts, tokens and logs go with the run.
            run_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="todo-api-bench-run-")))
        else:
            run_dir = new_run_dir()
        started = time.monotonic()
        rows: list[report.Row] = []
        plans: list[str] = []
        with embedded_postgres_server() as postgres:
            postgres_version = postgres.version()
            for index, size in enumerate(sizes):
                rows += _bench_size(postgres, size, args, wrk, run_dir, plans)
                if index + 1 < len(sizes):
                    postgres.drop_database(f"bench_{size.name}")  # room on disk for the next size
        (run_dir / "results.json").write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        settings = _settings(args, sizes)
        ratios = peer_ratios(rows, args.server)
        lines = [*report.table(rows), "", *report.summary(rows), *ratios]
        print("\n" + "\n".join(lines))
        if args.no_results:
            print(f"\nbench: done in {time.monotonic() - started:.0f} s")
        else:
            print(f"\nbench: done in {time.monotonic() - started:.0f} s; raw results in {run_dir}")
            notes = ratios + [f"- {note}" for note in args.note] + plans
            path = run_dir / report.REPORT_NAME
            report.write_results(
                rows, postgres_version=postgres_version, settings=settings, notes=notes, path=path
            )
            print(f"bench: the run's report, with its machine and command: {path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; the API and Postgres were stopped")
