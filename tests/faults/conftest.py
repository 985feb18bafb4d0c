"""Fixtures for tests that break things."""

from collections.abc import Iterator

import psycopg
import pytest

from tests.own_postgres import OwnPostgres


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A Postgres cluster of the test's own, to stop, restart or spoil: the session's shared one
    must stay up, with todo_app intact, for every other test."""
    with OwnPostgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def _module_cluster() -> Iterator[OwnPostgres]:
    with OwnPostgres() as cluster:
        yield cluster


@pytest.fixture
def module_postgres(_module_cluster: OwnPostgres) -> OwnPostgres:
    """A Postgres cluster the module's tests share, each in turn, to stop and start again: making one
    (initdb, migrations) took longer than most of those tests themselves. Up when the test starts (one
    that failed during its outage left it stopped). The tests keep apart by users of their own, and a
    test that changes the cluster for everyone (a role's connection limit, a grant) puts it back
    however it ends; one that cannot, spoils `own_postgres`."""
    try:
        psycopg.connect(_module_cluster.url).close()
    except psycopg.OperationalError:
        _module_cluster.start()
    return _module_cluster
