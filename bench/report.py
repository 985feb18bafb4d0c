"""The results table, the machine it ran on, and the run's report (bench/results/<time>/report.md).

bench/RESULTS.md is not written here: it is the curated report, edited by hand from these."""

import os
import platform
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.cpu import PhaseCpu

REPORT_NAME = "report.md"
_RESULTS_INTRO = """# Benchmark run

The run below was written by `python -m bench.run` (see bench/README.md): the API driven by wrk
against pgbench running the same transactions on the same Postgres, on the same machine, in the same
run. Absolute numbers move with the machine's neighbours; compare the ratios within one run.
"""


@dataclass(frozen=True)
class Row:
    size: str
    workers: int
    scenario: str
    api_rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    pgbench_tps: float
    pgbench_protocol: str
    pgbench_failed: int
    peak_rss_mb: float
    api_cpu: PhaseCpu
    pgbench_cpu: PhaseCpu

    @property
    def ratio(self) -> float:
        return self.api_rps / self.pgbench_tps if self.pgbench_tps else 0.0


def machine_description(postgres_version: str) -> list[str]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 1024**3
    return [
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}, model: {cpu_model}",
        f"- Memory: {memory_gib:.1f} GiB; OS: {platform.platform()}",
        f"- Postgres: {postgres_version}",
        f"- Python: {sys.version.split()[0]} ({platform.python_implementation()}), {interpreter_build()}",
    ]


def interpreter_build() -> str:
    """Which interpreter ran this, and how it was built: that moves the API's CPU per request by a
    fifth on this machine (bench/README.md, "The interpreter")."""
    executable = Path(sys.executable).resolve()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return f"{executable}"
    libpython = next((line.split()[-1] for line in maps.splitlines() if "/libpython" in line), None)
    linked = f"libpython loaded from {libpython}" if libpython else "libpython linked into the executable"
    return f"{executable} ({linked})"


def command_line() -> str:
    return shlex.join(sys.orig_argv)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| size | workers | scenario | API req/s | p50 ms | p99 ms | non-2xx"
        " | pgbench tps (faster protocol) | API/pgbench | peak RSS/worker MiB"
        " | CPU us/req: API, its Postgres, wrk | CPU us/tx: Postgres, pgbench |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        errors = f"{row.non_2xx}" + (f" (+{row.socket_errors} socket)" if row.socket_errors else "")
        lines.append(
            f"| {row.size} | {row.workers} | {row.scenario} | {row.api_rps:,.0f} | {row.p50_ms:.1f}"
            f" | {row.p99_ms:.1f} | {errors}"
            f" | {row.pgbench_tps:,.0f} ({row.pgbench_protocol}) | {row.ratio:.2f}"
            f" | {row.peak_rss_mb:.0f}"
            f" | {row.api_cpu.api_us:,.0f}, {row.api_cpu.postgres_us:,.0f}, {row.api_cpu.client_us:,.0f}"
            f" | {row.pgbench_cpu.postgres_us:,.0f}, {row.pgbench_cpu.client_us:,.0f} |"
        )
    return lines


def size_ratios(rows: list[Row]) -> list[str]:
    """List p50 on `large` over list p50 on `small`, per worker count, when both ran."""
    lines = []
    p50 = {(row.size, row.workers): row.p50_ms for row in rows if row.scenario == "list"}
    for (size, workers), large_p50 in sorted(p50.items()):
        small_p50 = p50.get(("small", workers))
        if size == "large" and small_p50:
            lines.append(
                f"- list p50 large / small with {workers} worker(s): {large_p50:.1f} / {small_p50:.1f} ms"
                f" = **{large_p50 / small_p50:.2f}** (target: at most 1.2)"
            )
    return lines


def summary(rows: list[Row]) -> list[str]:
    lines = [*size_ratios(rows)]
    if rows:
        lines.append(
            f"- peak RSS of any one worker: {max(row.peak_rss_mb for row in rows):.0f} MiB (target: < 150)"
        )
        lines.append(f"- non-2xx responses in all runs: {sum(row.non_2xx for row in rows)} (target: 0)")
        worst = min(rows, key=lambda row: row.ratio)
        lines.append(
            f"- lowest API/pgbench ratio: {worst.ratio:.2f} ({worst.scenario}, {worst.size}, "
            f"{worst.workers} worker(s))"
        )
    return lines


def write_results(
    rows: list[Row],
    *,
    postgres_version: str,
    settings: list[str],
    notes: list[str],
    path: Path,
) -> None:
    """Append this run to the report at `path` (created with an introduction when missing)."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"## Run of {started}",
        "",
        "```sh",
        command_line(),
        "```",
        "",
        *machine_description(postgres_version),
        *settings,
        "",
        *table(rows),
        "",
        *summary(rows),
        *notes,
        "",
    ]
    existing = path.read_text() if path.exists() else _RESULTS_INTRO
    path.write_text(existing.rstrip("\n") + "\n\n" + "\n".join(section))
