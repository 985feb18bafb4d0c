"""Prometheus metrics: what an operator watches, aggregated across every worker.

`todo-api serve` points PROMETHEUS_MULTIPROC_DIR at a folder of its own before prometheus_client is
imported (api/telemetry/multiprocess.py), so each worker writes its figures there and `/metrics`
adds them up (the client's multiprocess mode); without the variable (one process, as in the tests)
the figures are kept in memory. No label ever carries a user id or a raw path: routes are named by
their template, and requests that match no route share one label.

Each gauge's multiprocess mode says what it means across workers: a sum of the live workers' figures,
or the worst of them. "Live" gauges leave with their process (`forget_this_process`): the serving
parent, which answers no request, forgets its own before its workers start, and a worker that was
killed is forgotten by the worker that replaces it (`forget_dead_worker`).
"""

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest

from api.telemetry.multiprocess import DIR_VARIABLE

UNMATCHED_ROUTE = "(unmatched)"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

requests = Counter(
    "todo_api_http_requests", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)  # fmt: skip
request_duration = Histogram(
    "todo_api_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
    ["route"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
transaction_duration = Histogram(
    "todo_api_db_transaction_duration_seconds",
    "Database transactions (a connection taken, the statement run, the connection returned), by mode.",
    ["mode"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
pool_size = Gauge(
    "todo_api_db_pool_size", "Connections the workers' pools hold.",
    multiprocess_mode="livesum",
)  # fmt: skip
pool_in_use = Gauge(
    "todo_api_db_pool_connections_in_use", "Connections lent to requests right now.",
    multiprocess_mode="livesum",
)  # fmt: skip
pool_waiting = Gauge(
    "todo_api_db_pool_requests_waiting", "Requests waiting for a free connection.",
    multiprocess_mode="livesum",
)  # fmt: skip
event_streams_open = Gauge(
    "todo_api_event_streams_open", "Event streams open now (GET /api/{user_id}/events).",
    multiprocess_mode="livesum",
)  # fmt: skip
unavailable = Counter("todo_api_http_unavailable", "503 answers, by cause (problem type).", ["cause"])
jwks_fetches = Counter("todo_api_jwks_fetches", "Fetches of Better Auth's key set, by outcome.", ["outcome"])
# The least of the serving workers' verdicts: 1 only while every one of them last found nothing.
isolation_verified = Gauge(
    "todo_api_isolation_verified",
    "1 while the last isolation check of every worker found nothing, else 0.",
    multiprocess_mode="livemin",
)
# What was found, not whether it could be looked at: an outage is no finding (`isolation_verified`
# reads 0 and the timestamp below stands still), so an alert on findings means a hole, not a restart.
isolation_findings = Gauge(
    "todo_api_isolation_findings",
    "Findings of the last isolation check that completed, or a breach a request met since "
    "(the most any worker saw); a check that could not complete leaves it.",
    multiprocess_mode="livemax",
)
# The oldest of the serving workers' last checks: its age grows when any worker stops checking.
isolation_checked_at = Gauge(
    "todo_api_isolation_last_check_timestamp_seconds",
    "When the isolation check last completed in the worker that checked longest ago.",
    multiprocess_mode="livemin",
)
worker_restarts = Counter(
    "todo_api_worker_restarts", "Workers that died without stopping (killed, say) and were replaced."
)


def record_isolation_verdict(findings: int, *, completed: bool, found: bool) -> None:
    """A verdict is a check's, or a refusal's that distrusts isolation until the next check; only a
    check that completed moves the timestamp, so that its age shows checks failing or stopped, and
    only what was `found` (a check that completed, a breach) moves the count of findings."""
    isolation_verified.set(0 if findings else 1)
    if found:
        isolation_findings.set(findings)
    if completed:
        isolation_checked_at.set(time.time())


def exposition() -> bytes:
    """Every metric in the Prometheus text format, added up across workers when there are several."""
    if os.environ.get(DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def forget_this_process() -> None:
    """A worker that stops takes its live gauges with it (multiprocess mode only); so does the serving
    parent before its workers start, since it serves nothing: its gauges would only read 0."""
    if os.environ.get(DIR_VARIABLE):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_workers() -> list[int]:
    """The pids of processes that died without forgetting their live gauges: killed workers."""
    folder = os.environ.get(DIR_VARIABLE)
    if not folder:
        return []
    pids = {path.stem.rpartition("_")[2] for path in Path(folder).glob("gauge_live*_*.db")}
    return sorted(int(pid) for pid in pids if pid.isdigit() and not _running(int(pid)))


def forget_an_earlier_death(pid: int) -> None:
    """A worker starting under a pid a dead worker had (pids come back: a container that forks often
    reuses them within days): that death was counted, and this worker's own, if it comes, must be
    too, which the dead one's mark would stop (`forget_dead_worker`)."""
    folder = os.environ.get(DIR_VARIABLE)
    if folder:
        (Path(folder) / f"{pid}.dead").unlink(missing_ok=True)


def forget_dead_worker(pid: int) -> bool:
    """Forget a dead worker's live gauges and count its death; True for the one process, of all the
    workers that may find it, that does."""
    folder = Path(os.environ[DIR_VARIABLE])
    try:
        (folder / f"{pid}.dead").touch(exist_ok=False)  # not a .db file: the collector skips it
    except FileExistsError:
        return False
    multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    worker_restarts.inc()
    return True
