"""Where the machine's CPU went during one phase of a run: API workers, Postgres, the load generator.

Requests per second move with the machine's neighbours; CPU seconds per request move much less. So
each scenario also reports what one request cost each party, in CPU microseconds (user + system):

- the API workers, summed over workers;
- Postgres (the postmaster and every backend, including those that exited during the phase: their
  time is in the postmaster's reaped-children counters);
- the load generator (wrk or pgbench: a child of this harness, reaped when it finishes).

Together they tell whether a ratio moved because the API got cheaper, or because the machine was
busier, and how far the API is from Postgres's own cost per transaction.
"""

import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil


def _own_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def processes_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            total += _own_seconds(process)
        except psutil.Error:
            continue
    return total


def postgres_seconds(pgdata: Path) -> float:
    """CPU ever used by this Postgres: the postmaster, its live children, and its reaped children."""
    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().splitlines()[0]))
    times = postmaster.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system) + processes_seconds(
        postmaster.children()
    )


def process_cpu_seconds(pid: int) -> float:
    """A process's CPU time to the nanosecond (/proc/<pid>/schedstat), where psutil's counts ticks
    of 10 ms: a batch of fast requests, or one backend's query, is only a few ticks long."""
    with open(f"/proc/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[0]) / 1e9


def reaped_children_seconds() -> float:
    """CPU of this harness's finished child processes (wrk, pgbench), counted once they are reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class PhaseCpu:
    """CPU microseconds per request (or per pgbench transaction) for each party."""

    api_us: float
    postgres_us: float
    client_us: float


@dataclass
class CpuMeter:
    """Adds up what each party used inside its `with` blocks; `per_unit(n)` divides the totals by n."""

    pgdata: Path
    api_processes: list[psutil.Process]
    _used: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __enter__(self) -> "CpuMeter":
        self._start = self._snapshot()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._snapshot()
        self._used = (
            self._used[0] + end[0] - self._start[0],
            self._used[1] + end[1] - self._start[1],
            self._used[2] + end[2] - self._start[2],
        )

    def _snapshot(self) -> tuple[float, float, float]:
        return (
            processes_seconds(self.api_processes),
            postgres_seconds(self.pgdata),
            reaped_children_seconds(),
        )

    def per_unit(self, units: int) -> PhaseCpu:
        scale = 1e6 / units if units else 0.0
        api, postgres, client = self._used
        return PhaseCpu(api * scale, postgres * scale, client * scale)
