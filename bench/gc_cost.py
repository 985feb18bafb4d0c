"""What CPython's garbage collector costs one serving worker, with and without `api/ops/collector.py`'s
settings (`gc.freeze()` after start-up, young-generation threshold 7,000):

    .venv/bin/python -m bench.gc_cost --scenarios get,list --duration 10

The worker is the real one (`todo-api serve`, one worker), driven by wrk as in bench.run. A
`sitecustomize` module put on the worker's PYTHONPATH times every collection after start-up through
`gc.callbacks` and writes the totals when the worker exits; for the "CPython defaults" variant it
also turns `gc.freeze` and `gc.set_threshold` into no-ops, so the worker keeps the interpreter's
defaults.
"""

import argparse
import json
from typing import Any

from bench import dataset
from bench.api_server import running_api
from bench.postgres import embedded_postgres_server
from bench.run import new_run_dir, prepare
from bench.scenarios import SCENARIOS
from bench.wrk import ensure_wrk, run_wrk

_SITECUSTOMIZE = """
import atexit, gc, json, os, time

# Each process counts its own collections from its own gc.freeze(): the worker's comes right after it
# built the app (api/ops/collector.py), so that the imports' collections stay out of the figures. granian
# forks the worker from serve's process, which freezes too (api/ops/server.py) and serves nothing, so a
# fork forgets what it inherited, and each process writes its figures to a file named by its pid: a
# forked worker leaves through os._exit, which runs no atexit hook.
_totals = {}
_started = []
_serving_since = []
_freeze, _set_threshold, _exit = gc.freeze, gc.set_threshold, os._exit
_defaults = bool(os.environ.get("BENCH_GC_DEFAULTS"))

def _forget():
    _totals.update(collections=[0, 0, 0], seconds=0.0, cpu_seconds=0.0)
    _started.clear()
    _serving_since.clear()

def _timed(phase, info):
    if not _serving_since:
        return
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        _totals["collections"][info["generation"]] += 1
        _totals["seconds"] += time.perf_counter() - _started.pop()

def _start_counting():
    _serving_since.append(sum(os.times()[:2]))
    if not _defaults:
        _freeze()

def _write():
    if not _serving_since:
        return
    _totals["cpu_seconds"] = sum(os.times()[:2]) - _serving_since[0]
    with open(os.path.join(os.environ["BENCH_GC_REPORTS"], f"{os.getpid()}.json"), "w") as report:
        json.dump({**_totals, "threshold": gc.get_threshold()}, report)

def _write_then_exit(code):
    _write()
    _exit(code)

_forget()
os.register_at_fork(after_in_child=_forget)
gc.callbacks.append(_timed)
gc.freeze = _start_counting
gc.set_threshold = (lambda *_: None) if _defaults else _set_threshold
atexit.register(_write)
os._exit = _write_then_exit
"""

_VARIANTS = {"CPython defaults": {"BENCH_GC_DEFAULTS": "1"}, "api/ops/worker.py settings": {}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gc_cost", description=__doc__)
    parser.add_argument("--scenarios", default="get,list")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per scenario")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    run_dir = new_run_dir()
    (run_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with embedded_postgres_server() as postgres:
        size = dataset.SIZES["small"]
        prepared = prepare(postgres, size, run_dir, 1000, {})
        for variant, variant_env in _VARIANTS.items():
            reports = run_dir / f"gc-{len(rows)}"
            reports.mkdir()
            env = {"PYTHONPATH": str(run_dir), "BENCH_GC_REPORTS": str(reports), **variant_env}
            requests = 0
            with running_api(prepared.url, prepared.secret, workers=1, run_dir=run_dir, extra_env=env) as api:
                (worker,) = api.worker_processes()
                for name in args.scenarios.split(","):
                    dataset.restore(postgres.superuser_url(prepared.dbname), size)
                    result = run_wrk(
                        wrk,
                        api.base_url,
                        SCENARIOS[name],
                        prepared.users_file,
                        connections=args.connections,
                        threads=2,
                        duration=args.duration,
                    )
                    requests += result.requests
            report = reports / f"{worker.pid}.json"
            if not report.exists():
                raise SystemExit(f"bench: the worker ({variant}) left no figures in {reports}")
            totals = json.loads(report.read_text())
            rows.append((variant, requests, totals))
    print(
        f"\nscenarios {args.scenarios}, {args.duration} s each, one worker, {args.connections} connections\n"
    )
    print("| worker | requests | threshold | collections (gen 0, 1, 2) | GC seconds | share of worker CPU |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for variant, requests, totals in rows:
        collections = ", ".join(f"{count:,}" for count in totals["collections"])
        share = totals["seconds"] / totals["cpu_seconds"]
        print(
            f"| {variant} | {requests:,} | {tuple(totals['threshold'])} | {collections} "
            f"| {totals['seconds']:.2f} | {share:.1%} |"
        )


if __name__ == "__main__":
    main()
