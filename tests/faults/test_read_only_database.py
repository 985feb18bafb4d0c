"""A database that refuses every write, a hot standby (`pg_basebackup -R`) or one whose sessions are
read-only by default (default_transaction_read_only): `serve` and `migrate` refuse it at start-up in
one line.

The standby is a real one, of a cluster of the module's own: it takes a few seconds to make.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.own_postgres import OwnPostgres, OwnStandby
from tests.support import SECRET, run_cli
from tests.test_cli_failures import assert_one_clear_failure


@pytest.fixture(scope="module")
def primary() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def standby(primary: OwnPostgres) -> Iterator[OwnStandby]:
    replica = OwnStandby(primary)
    try:
        yield replica
    finally:
        replica.remove()


def _read_only_sessions(database_url: str) -> None:
    """Every session that starts from now on in the database of `database_url` is read-only."""
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(
            sql.SQL("alter database {} set default_transaction_read_only = on").format(
                sql.Identifier(owner.info.dbname)
            )
        )


def _one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert_one_clear_failure(result.stderr, result.returncode, *expected)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_serve_refuses_a_standby(tmp_path: Path, standby: OwnStandby) -> None:
    """It served: /readyz said 200 and every write was a 500."""
    result = run_cli(
        "serve", "--port", "0", cwd=tmp_path, DATABASE_URL=standby.url, BETTER_AUTH_SECRET=SECRET
    )
    _one_line(result, "Refusing to serve: DATABASE_URL reaches a standby in recovery", "the primary")


def test_migrate_refuses_a_standby_and_blames_no_other_migration(tmp_path: Path, standby: OwnStandby) -> None:
    """yoyo's lock was refused and retried until its wait was over: "another migration holds this
    database's migration lock ... remove the stale lock with yoyo break-lock"."""
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=standby.url)
    _one_line(result, "DATABASE_URL reaches a standby in recovery", "point DATABASE_URL at the primary")
    assert "another migration" not in result.stderr
    assert "break-lock" not in result.stderr


def test_serve_refuses_a_direct_url_that_reaches_a_standby(
    tmp_path: Path, primary: OwnPostgres, standby: OwnStandby
) -> None:
    """Its LISTEN was refused: an ERROR traceback per retry, and streams woke only when they polled."""
    result = run_cli(
        "serve", "--port", "0", cwd=tmp_path,
        DATABASE_URL=primary.url, DATABASE_DIRECT_URL=standby.url, BETTER_AUTH_SECRET=SECRET,
    )  # fmt: skip
    _one_line(result, "Refusing to serve: DATABASE_DIRECT_URL reaches a standby in recovery")


def test_serve_refuses_a_direct_url_that_reaches_another_server(
    tmp_path: Path, primary: OwnPostgres, migrated_db_url: str
) -> None:
    """The same database name on another server: a LISTEN there never hears a write of DATABASE_URL's."""
    with psycopg.connect(migrated_db_url) as db:
        name = db.info.dbname
    with psycopg.connect(primary.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        direct = primary.url.replace("/todo?", f"/{name}?")
        result = run_cli(
            "serve", "--port", "0", cwd=tmp_path,
            DATABASE_URL=migrated_db_url, DATABASE_DIRECT_URL=direct, BETTER_AUTH_SECRET=SECRET,
        )  # fmt: skip
        _one_line(result, "Refusing to serve: DATABASE_DIRECT_URL reaches another Postgres server")
    finally:
        with psycopg.connect(primary.superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def test_read_only_sessions_refuse_serve_and_migrate(tmp_path: Path, migrated_db_url: str) -> None:
    _read_only_sessions(migrated_db_url)
    served = run_cli(
        "serve", "--port", "0", cwd=tmp_path, DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET
    )
    _one_line(served, "DATABASE_URL's sessions are read-only (default_transaction_read_only is on)")
    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=migrated_db_url)
    _one_line(migrated, "DATABASE_URL's sessions are read-only (default_transaction_read_only is on)")
    assert "another migration" not in migrated.stderr
