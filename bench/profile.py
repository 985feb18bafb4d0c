"""Where one API worker spends its time under load: py-spy on a single worker while wrk drives it.

    .venv/bin/python -m bench.profile --scenarios list,create --duration 15

Same setup as bench.run (embedded Postgres, the `small` dataset unless told otherwise, one API worker),
then per scenario: wrk in the background and `py-spy record --subprocesses` on the server (granian
runs the app in a child process) for the same time. Each
sample is put in one bucket (auth, logging, metrics, psycopg, validation, serialisation, ...) by
the first rule in _BUCKETS that one of its frames matches; prints the buckets and the hottest
functions, and keeps the raw stacks (for flame graphs) in bench/results/<time>/.
Needs py-spy (`.venv/bin/pip install py-spy`) and the right to ptrace (root, or ptrace_scope 0).
"""

import argparse
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench import dataset
from bench.api_server import SERVERS, running_api
from bench.postgres import embedded_postgres_server
from bench.run import new_run_dir, prepare
from bench.scenarios import SCENARIOS
from bench.wrk import ensure_wrk, run_wrk

_RATE = 250

# First match wins, so the specific come before the general: every stack passes through Starlette
# and asyncio, and every query through psycopg. Frames read "function (package/module.py:line)", so
# patterns start at "(" where a bare substring would also match another package (fastapi/telemetry/).
_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("auth: JWT verification and its cache", ("(api/auth/", "(jwt/", "(cachetools/")),
    ("logging", ("(logging/", "(api/telemetry/logs.py")),
    ("metrics", ("(prometheus_client/", "(api/telemetry/metrics.py")),
    ("building statements (api.tasks.queries)", ("(api/tasks/queries.py",)),
    ("psycopg: send, wait, receive, adapt", ("(psycopg/", "(psycopg_pool/", "(api/db/")),
    ("response: JSON serialisation", ("dump_json", "jsonable_encoder", "(json/", "Response.render")),
    ("response: pydantic validation", ("model_validate", "validate_python", "(pydantic/")),
    ("request: body and parameters", ("request_body_to_args", "Request.body", "(api/http/parameters.py")),
    ("FastAPI: dependencies, routing, sending the response", ("(fastapi/",)),
    (
        "middleware: CORS, request telemetry, body limit",
        ("(starlette/middleware", "(api/http/request_telemetry.py", "(api/http/body_limit.py"),
    ),
    ("Starlette", ("(starlette/",)),
    ("granian: HTTP protocol and worker", ("(granian/",)),
)


def _bucket(frames: list[str]) -> str:
    for name, patterns in _BUCKETS:
        if any(pattern in frame for frame in frames for pattern in patterns):
            return name
    if all(frame.startswith("process ") for frame in frames):
        return "native, no Python frame: granian's Rust, the event loop, the collector"
    return "asyncio and the rest"


def summarise(raw: Path, duration: int, top: int = 20) -> list[str]:
    """Buckets and hottest leaf functions from py-spy's raw (collapsed stack) output."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        buckets[_bucket(frames)] += count
        leaves[frames[-1]] += count
        total += count
    if not total:
        return ["no samples: is the worker busy, and may py-spy attach to it?"]
    busy = total / (duration * _RATE)
    lines = [f"{total} samples; the worker was busy in {busy:.0%} of them (1 core = 100%)", ""]
    lines += ["| where | share of busy time |", "| --- | ---: |"]
    lines += [f"| {name} | {count / total:.0%} |" for name, count in buckets.most_common()]
    lines += ["", f"hottest functions (self time), top {top}:"]
    lines += [f"  {count / total:6.1%}  {leaf}" for leaf, count in leaves.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--size", default="small", choices=list(dataset.SIZES))
    parser.add_argument("--scenarios", default="list,create")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sample-users", type=int, default=1000)
    parser.add_argument(
        "--server",
        default="api",
        choices=[name for name in SERVERS if name != "postgraphile"],
        help="which server to profile: the API, or one of the floors to set beside it (default: api)",
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("bench: py-spy is missing: .venv/bin/pip install py-spy")
    wrk = ensure_wrk()
    run_dir = new_run_dir()
    with embedded_postgres_server() as postgres:
        prepared = prepare(postgres, dataset.SIZES[args.size], run_dir, args.sample_users, {})
        with running_api(
            prepared.url, prepared.secret, workers=1, run_dir=run_dir, extra_env={}, server=args.server
        ) as api:
            load = {"connections": args.connections, "threads": 2}
            run_wrk(wrk, api.base_url, SCENARIOS["list"], prepared.users_file, **load, duration=3)
            for name in args.scenarios.split(","):
                raw = run_dir / f"profile-{name}.txt"
                driver = threading.Thread(
                    target=run_wrk,
                    args=(wrk, api.base_url, SCENARIOS[name], prepared.users_file),
                    kwargs={**load, "duration": args.duration + 2},
                )
                driver.start()
                record = [
                    py_spy,
                    "record",
                    "--pid",
                    str(api.process.pid),
                    "--rate",
                    str(_RATE),
                    "--nonblocking",
                    "--subprocesses",
                ]
                subprocess.run(
                    [*record, "--duration", str(args.duration), "--format", "raw", "--output", str(raw)],
                    check=True,
                    timeout=args.duration + 60,
                    capture_output=True,
                )
                driver.join()
                print(f"\n## {name}\n")
                print("\n".join(summarise(raw, args.duration)), flush=True)
    print(f"\nraw stacks in {run_dir} (flame graph: feed them to flamegraph.pl or speedscope)")


if __name__ == "__main__":
    main()
