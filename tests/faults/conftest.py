"""Fixtures for tests that break things."""

from collections.abc import Iterator

import pytest

from tests.own_postgres import OwnPostgres


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A Postgres cluster of the test's own, to stop, restart or spoil: the session's shared one
    must stay up, with todo_app intact, for every other test."""
    with OwnPostgres() as cluster:
        yield cluster
