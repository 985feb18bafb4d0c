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
import atexit, gc, json, os, signal, sys, time

# Counting starts when api/ops/collector.py calls gc.freeze(), right after the app is built, so that the
# imports' own collections stay out of the figures.
_totals = {"collections": [0, 0, 0], "seconds": 0.0, "cpu_seconds": 0.0}
_started = []
_serving_since = []
_freeze, _set_threshold = gc.freeze, gc.set_threshold
_defaults = bool(os.environ.get("BENCH_GC_DEFAULTS"))

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

gc.callbacks.append(_timed)
gc.freeze = _start_counting
gc.set_threshold = (lambda *_: None) if _defaults else _set_threshold

# uvicorn re-raises SIGTERM once it has shut down; exiting on it instead lets atexit run.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

@atexit.register
def _write():
    if _serving_since:
        _totals["cpu_seconds"] = sum(os.times()[:2]) - _serving_since[0]
    with open(os.environ["BENCH_GC_REPORT"], "w") as report:
        json.dump({**_totals, "threshold": gc.get_threshold()}, report)
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
            report = run_dir / f"gc-{len(rows)}.json"
            env = {"PYTHONPATH": str(run_dir), "BENCH_GC_REPORT": str(report), **variant_env}
            requests = 0
            with running_api(prepared.url, prepared.secret, workers=1, run_dir=run_dir, extra_env=env) as api:
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
