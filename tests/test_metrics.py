"""GET /metrics, read as Prometheus reads it: counts that add up across workers, labels that never
carry a user id or a raw path."""

import asyncio
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from prometheus_client import REGISTRY

from api.app import create_app
from api.telemetry.metrics import dead_workers, forget_an_earlier_death, forget_dead_worker
from api.telemetry.multiprocess import DIR_VARIABLE
from tests.api.events_client import async_client, opened
from tests.support import (
    CLI,
    PROBE,
    SECRET,
    TLS,
    ApiUser,
    Samples,
    cli_env,
    new_user,
    scrape,
    serve_command,
    serve_process,
    serving,
    settings_for,
    value,
    wait_for_pool_gauges,
    wait_until,
    wait_until_it_waits_for,
)


def test_requests_are_counted_by_route_template_and_status(api_url: str, client: httpx.Client) -> None:
    alice = new_user()
    before = scrape(api_url)
    client.post(alice.tasks_url, json={"title": "counted"}, headers=alice.headers)
    client.get(alice.tasks_url, headers=alice.headers)
    client.get(alice.tasks_url)
    after = scrape(api_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/api/{user_id}/tasks"
    assert grew("todo_api_http_requests_total", method="POST", route=route, status="201") == 1
    assert grew("todo_api_http_requests_total", method="GET", route=route, status="200") == 1
    assert grew("todo_api_http_requests_total", method="GET", route=route, status="401") == 1
    assert grew("todo_api_http_request_duration_seconds_count", route=route) == 3
    assert grew("todo_api_db_transaction_duration_seconds_count", mode="read_write") == 1
    assert grew("todo_api_db_transaction_duration_seconds_count", mode="read_only") == 1


def test_requests_answered_before_or_beside_the_routes_are_counted_by_their_template(
    api_url: str, client: httpx.Client, alice: ApiUser
) -> None:
    """A body refused for its declared size is answered before routing, /openapi.json is a route
    FastAPI's router does not name in the scope, and the docs' assets are a mount, which moves the
    path it matched out of the scope's path: all were counted as "(unmatched)", the assets with 200."""
    before = scrape(api_url)
    too_large = client.post(
        alice.tasks_url,
        content=b'{"title": "' + b"x" * (64 * 1024) + b'"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert too_large.status_code == 413
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/assets/nothing-here.js").status_code == 404
    # A request is counted once its answer has been sent, which the client may have read whole a moment
    # before: the stylesheet's count came after the next scrape once, in CI.
    name = "todo_api_http_requests_total"

    def assets_counted(samples: Samples) -> float:
        return sum(value(samples, name, method="GET", route="/docs/assets", status=s) for s in ("200", "404"))

    wait_until(lambda: assets_counted(scrape(api_url)) >= assets_counted(before) + 2, "assets counted", 10)
    after = scrape(api_url)

    def grew(**labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(method="POST", route="/api/{user_id}/tasks", status="413") == 1
    assert grew(method="GET", route="/openapi.json", status="200") == 1
    assert grew(method="GET", route="/docs/assets", status="200") == 1
    assert grew(method="GET", route="/docs/assets", status="404") == 1
    assert grew(method="POST", route="(unmatched)", status="413") == 0
    assert grew(method="GET", route="(unmatched)", status="200") == 0


def test_a_safe_database_shows_as_verified(api_db_url: str) -> None:
    # An app of the test's own: the gauges belong to the process, and apps of other tests check
    # weakened databases (tests/test_isolation_watch.py asserts what those show).
    started = time.time()
    with serving(create_app(settings_for(api_db_url))) as base_url:
        samples = scrape(base_url)
    assert value(samples, "todo_api_isolation_verified") == 1
    assert value(samples, "todo_api_isolation_findings") == 0
    assert value(samples, "todo_api_isolation_last_check_timestamp_seconds") >= started


def is_ready(base_url: str) -> bool:
    return PROBE.get(f"{base_url}/readyz").status_code == 200


def test_checks_that_cannot_complete_leave_the_timestamp_and_the_findings_where_they_were(
    migrated_db_url: str, superuser_url: str, tmp_path: Path
) -> None:
    """The timestamp moved on every check, completed or not: through an outage it kept advancing
    while every check failed, though its help says when a check last completed. And the findings
    read 1 through every outage, so an alert on them (a hole in isolation) paged for a restart; a
    real finding still counts. A server of its own, so that no other app of this process checks
    meanwhile (the gauges are the process's)."""
    timestamp = "todo_api_isolation_last_check_timestamp_seconds"
    findings = "todo_api_isolation_findings"
    env = cli_env(
        DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET, ISOLATION_CHECK_INTERVAL_SECONDS="0.5"
    )
    database = migrated_db_url.split("/")[3].split("?")[0]
    command = serve_command(env, "--workers", "1")
    with (
        serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (base_url, _),
        psycopg.connect(superuser_url.replace("/postgres?", f"/{database}?"), autocommit=True) as superuser,
    ):
        assert value(scrape(base_url), timestamp) > 0, "the start-up check completed"
        # Blinded, the check cannot complete: a finding, retried about every half second.
        superuser.execute("revoke select on pg_catalog.pg_policy from public")
        try:
            wait_until(lambda: not is_ready(base_url), "a check that cannot complete is a finding", 30)
            last_completed = value(scrape(base_url), timestamp)
            time.sleep(2)  # more checks that cannot complete
            samples = scrape(base_url)
            after_failed_checks = value(samples, timestamp)
            assert value(samples, "todo_api_isolation_verified") == 0
            assert value(samples, findings) == 0, "not verified, and nothing found"
        finally:
            superuser.execute("grant select on pg_catalog.pg_policy to public")
        wait_until(lambda: is_ready(base_url), "served again once a check completes clean", 30)
        assert value(scrape(base_url), timestamp) > after_failed_checks, "a completed check moves it"
        superuser.execute("alter table public.tasks no force row level security")
        try:
            wait_until(lambda: not is_ready(base_url), "a weakened table is a finding", 30)
            samples = scrape(base_url)
            assert value(samples, "todo_api_isolation_verified") == 0
            assert value(samples, findings) > 0, "the table's and what its reach lost"
        finally:
            superuser.execute("alter table public.tasks force row level security")
        wait_until(lambda: is_ready(base_url), "served again once repaired", 30)
        assert value(scrape(base_url), findings) == 0
    assert after_failed_checks == last_completed


def test_no_label_carries_a_user_id_or_a_raw_path(api_url: str, client: httpx.Client, alice: ApiUser) -> None:
    client.get(alice.tasks_url, headers=alice.headers)
    client.get(f"/api/{alice.id}/nowhere", headers=alice.headers)
    labels = {label for (_, pairs) in scrape(api_url) for _, label in pairs}
    assert not any(alice.id in label for label in labels)
    assert "(unmatched)" in labels


def test_metrics_can_be_turned_off(api_db_url: str) -> None:
    with serving(create_app(settings_for(api_db_url, metrics_enabled=False))) as base_url:
        assert httpx.get(f"{base_url}/metrics").status_code == 404


def test_figures_add_up_across_workers(api_db_url: str, tmp_path: Path) -> None:
    alice = new_user()
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, DB_POOL_SIZE="3")
    command = [*CLI, "serve", "--workers", "2"]
    with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (base_url, server):
        for _ in range(40):  # a connection each, so that both workers answer some
            with httpx.Client(base_url=base_url, verify=TLS) as one_request:
                assert one_request.get(alice.tasks_url, headers=alice.headers).status_code == 200
        time.sleep(1.5)  # the pool gauges are read once a second
        for _ in range(3):  # whichever worker answers the scrape, it reports both
            samples = scrape(base_url)
            listed = value(
                samples,
                "todo_api_http_requests_total",
                method="GET",
                route="/api/{user_id}/tasks",
                status="200",
            )
            assert listed == 40
            assert value(samples, "todo_api_db_pool_size") == 6
            # Every serving worker found nothing; the serving parent, which serves nothing, has no say.
            assert value(samples, "todo_api_isolation_verified") == 1
            assert value(samples, "todo_api_isolation_findings") == 0
        # This server's folder, told apart from those of other servers on the machine by its workers' pids.
        workers = {f"_{child.pid}.db" for child in psutil.Process(server.pid).children()}
        (folder,) = [
            folder
            for folder in Path(tempfile.gettempdir()).glob("todo-api-serve-*")
            if any(file.name.endswith(tuple(workers)) for file in folder.glob("metrics/*.db"))
        ]
    assert not folder.exists(), "serve cleans up"


def test_open_event_streams_are_counted_across_workers_until_they_end(
    api_db_url: str, tmp_path: Path
) -> None:
    """An operator sees how many live-change streams the workers hold (the soak probe found none to
    watch): each worker counts its own, a scrape adds them up, and a stream that ends is counted out."""
    alice, bob = new_user(), new_user()
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET)
    command = [*CLI, "serve", "--workers", "2"]

    def open_streams() -> float:
        return value(scrape(base_url), "todo_api_event_streams_open")

    async def scenario() -> None:
        # A client each, so that the streams may land on either worker.
        async with (
            async_client(base_url) as first,
            async_client(base_url) as second,
            opened(first, alice) as one,
            opened(second, bob) as other,
        ):
            assert (one.response.status_code, other.response.status_code) == (200, 200)
            assert open_streams() == 2
        wait_until(lambda: open_streams() == 0, "both streams counted out once they end", 30)

    with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (base_url, _):
        assert open_streams() == 0
        asyncio.run(scenario())


def test_methods_the_api_does_not_know_share_one_label(api_url: str, client: httpx.Client) -> None:
    for method in ("PROPFIND", "MKCOL", "TRACE"):  # methods uvicorn's parser lets through
        assert client.request(method, "/healthz").status_code == 405
    methods = {label for (_, pairs) in scrape(api_url) for key, label in pairs if key == "method"}
    assert "OTHER" in methods
    assert methods.isdisjoint({"PROPFIND", "MKCOL", "TRACE"})


def test_a_request_waiting_for_a_held_pool_is_counted_as_waiting(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str, tmp_path: Path
) -> None:
    """The pool gauges count requests: one whose write waits on a row lock holds the only
    connection, and another user's request waits for it."""
    alice, bob = new_user(), new_user()
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        BETTER_AUTH_SECRET=SECRET,
        DB_POOL_SIZE="1",
        # Both requests wait for the lock, not for a timeout, however slow the machine.
        DB_POOL_TIMEOUT_SECONDS="120",
        DB_STATEMENT_TIMEOUT_MS="120000",
        # The periodic isolation check takes a pooled connection too; not during this test.
        ISOLATION_CHECK_INTERVAL_SECONDS="3600",
    )
    with (
        serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
            base_url,
            _,
        ),
        httpx.Client(base_url=base_url, timeout=120) as client,
        ThreadPoolExecutor(2) as senders,
    ):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        wait_for_pool_gauges(base_url, waiting=0, in_use=0)
        migrated_db.execute("select 1 from tasks where id = %s for update", [task["id"]])
        update = senders.submit(
            client.put, alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers
        )
        wait_until_it_waits_for(migrated_db, update)
        listing = senders.submit(client.get, bob.tasks_url, headers=bob.headers)

        wait_for_pool_gauges(base_url, waiting=1, in_use=1)
        migrated_db.rollback()  # the lock goes: the write, then the listing, get the connection
        updated, listed = update.result(), listing.result()
        wait_for_pool_gauges(base_url, waiting=0, in_use=0)

    assert updated.status_code == 200, updated.text
    assert listed.status_code == 200, listed.text
    assert listed.json() == []
    stored = migrated_db.execute("select title from tasks where id = %s", [task["id"]]).fetchall()
    assert stored == [("after",)]


def test_a_request_that_never_got_a_connection_is_no_database_transaction(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str
) -> None:
    """The transaction histogram times a connection taken, the statement run and the connection
    returned, as its help says: a request that waited for the pool and was refused (503 here; a 429
    for a user past their share alike) sent the database nothing, and read as a transaction as long
    as DB_POOL_TIMEOUT_SECONDS, so a queue in front of a healthy database looked like a slow one."""
    alice, bob = new_user(), new_user()
    settings = settings_for(
        migrated_db_url,
        db_pool_size=1,
        db_pool_timeout_seconds=1,
        db_statement_timeout_ms=120_000,
        # The periodic isolation check takes a pooled connection too; not during this test.
        isolation_check_interval_seconds=3600,
    )
    with (
        serving(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=120) as client,
        ThreadPoolExecutor(1) as sender,
    ):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        migrated_db.execute("select 1 from tasks where id = %s for update", [task["id"]])
        update = sender.submit(
            client.put, alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers
        )
        wait_until_it_waits_for(migrated_db, update)  # it holds the only connection
        before = scrape(base_url)
        refused = client.get(bob.tasks_url, headers=bob.headers)
        after = scrape(base_url)
        migrated_db.rollback()
        assert update.result().status_code == 200

    assert refused.status_code == 503, refused.text
    transactions = "todo_api_db_transaction_duration_seconds_count"
    assert value(after, transactions, mode="read_only") == value(before, transactions, mode="read_only")
    assert value(after, "todo_api_http_unavailable_total", cause="database-unavailable") == 1 + value(
        before, "todo_api_http_unavailable_total", cause="database-unavailable"
    )


def test_a_worker_killed_under_the_pid_of_one_killed_before_is_counted_and_forgotten_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pids come back. The death of a killed worker was marked by its pid and the mark stayed, so a
    later worker given that pid and killed in turn was neither counted nor logged, and its gauges
    stayed for good (a probe that made the kernel reuse a pid saw the pool's size doubled and the
    isolation check's timestamp stuck at the dead worker's last check)."""
    monkeypatch.setenv(DIR_VARIABLE, str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # a pid no process has now: the killed workers'
    gauges = tmp_path / f"gauge_livesum_{gone.pid}.db"

    def restarts() -> float:
        return REGISTRY.get_sample_value("todo_api_worker_restarts_total") or 0.0

    counted = restarts()
    gauges.touch()  # what the first worker under that pid left when it was killed
    assert dead_workers() == [gone.pid]
    assert forget_dead_worker(gone.pid)
    assert not gauges.exists()
    assert not forget_dead_worker(gone.pid), "one process of those that find it counts it"

    forget_an_earlier_death(gone.pid)  # a worker starts under the pid, and is killed in turn
    gauges.touch()
    assert dead_workers() == [gone.pid]
    assert forget_dead_worker(gone.pid)
    assert not gauges.exists()
    assert restarts() == counted + 2
