"""Run pgbench with the generated scripts: the database's own ceiling for the API's transactions."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.deletable import DeletablePool
from bench.postgres import PG_BIN, BenchPostgres
from bench.sample import Sample
from bench.scenarios import Scenario

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    output: str


def run_pgbench(
    postgres: BenchPostgres,
    dbname: str,
    scenario: Scenario,
    scripts_dir: Path,
    sample: Sample,
    deletable: DeletablePool,
    *,
    clients: int,
    threads: int,
    duration: int,
    protocol: str,
) -> PgbenchResult:
    command = [
        str(PG_BIN / "pgbench"),
        "--no-vacuum",
        f"--protocol={protocol}",
        f"--client={clients}",
        f"--jobs={threads}",
        f"--time={duration}",
        *(f"--define={name}={value}" for name, value in sample.pgbench_variables().items()),
        # The delete script's: where its pool lies, and each client's count of deletes so far.
        *(f"--define={name}={value}" for name, value in deletable.pgbench_variables().items()),
        f"--define=clients={clients}",
        "--define=deletes=0",
        *(f"--file={scripts_dir / name}.sql@{weight}" for name, weight in scenario.pgbench_scripts),
        *postgres.pgbench_connection_args(dbname),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=False)
    output = completed.stdout + completed.stderr
    tps = _TPS.search(output)
    if completed.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({completed.returncode}):\n{output[-3000:]}")
    processed, failed = _PROCESSED.search(output), _FAILED.search(output)
    return PgbenchResult(
        float(tps.group(1)),
        int(processed.group(1)) if processed else 0,
        int(failed.group(1)) if failed else 0,
        output,
    )
