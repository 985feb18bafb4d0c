"""A `todo-api migrate` stopped (Ctrl-C, SIGTERM, SIGHUP) or killed part-way leaves a database the
next migrate finishes: no migration made and left unrecorded, no migration lock left by a stop, and
the exit status of the stop, not of a failure."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from yoyo import get_backend, read_migrations

from api.db.sql_files import MIGRATIONS_DIR
from api.db.urls import yoyo_url
from tests.support import CLI, SECRET, cli_env, run_cli

MIGRATIONS = [migration.id for migration in read_migrations(str(MIGRATIONS_DIR))]


def _without_the_last_migration(database_url: str) -> str:
    """Rolls the newest migration back, so that a migrate has one to apply; returns its id."""
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    last = str(migrations[-1].id)
    try:
        with backend.lock():
            backend.rollback_migrations(migrations.filter(lambda migration: migration.id == last))
    finally:
        backend.connection.close()
    return last


def _recorded(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as db:
        return [row[0] for row in db.execute("select migration_id from _yoyo_migration order by 1")]


def _locks(database_url: str) -> int:
    with psycopg.connect(database_url) as db:
        (count,) = db.execute("select count(*) from yoyo_lock").fetchone() or (0,)
        return int(count)


def _migrates_to_the_end(database_url: str, tmp_path: Path) -> None:
    again = run_cli("migrate", cwd=tmp_path, DATABASE_URL=database_url, BETTER_AUTH_SECRET=SECRET)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _recorded(database_url) == MIGRATIONS


def _recording_waits(database_url: str) -> bool:
    """Whether a session waits to write a migration's record (behind the test's lock on the table)."""
    with psycopg.connect(database_url, autocommit=True) as db:
        waiting = db.execute(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
            " and query ilike 'insert into%_yoyo_migration%'"
        ).fetchone()
        return bool(waiting and waiting[0])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_migrate_stopped_while_recording_a_migration_leaves_it_unmade_for_the_next_to_make(
    tmp_path: Path, migrated_db_url: str, stop: signal.Signals
) -> None:
    """yoyo committed a migration, then recorded it in a transaction of its own: a migrate stopped or
    killed (a deploy's timeout) in between left the migration made but unrecorded, and every later
    migrate, and every serve of an embedded database, failed on making it again ("relation ...
    already exists"), for good. The migration and its record are one transaction now: stopped while
    the record waits, neither is there, and the next migrate applies it."""
    last = _without_the_last_migration(migrated_db_url)
    with psycopg.connect(migrated_db_url) as blocker:
        # Ended by the server in the end, so a migrate that never gets this far fails, not hangs.
        blocker.execute("set idle_in_transaction_session_timeout = '60s'")
        blocker.execute("lock table public._yoyo_migration in exclusive mode")  # reads pass, writes wait
        migrate = subprocess.Popen(
            [*CLI, "migrate"], cwd=tmp_path, env=cli_env(DATABASE_URL=migrated_db_url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not _recording_waits(migrated_db_url):
            assert migrate.poll() is None, migrate.communicate()
            assert time.monotonic() < deadline, "migrate never came to record the migration"
            time.sleep(0.05)
        migrate.send_signal(stop)
        stdout, stderr = migrate.communicate(timeout=60)
    assert (migrate.returncode, stdout, stderr) == (
        (143, "", "") if stop == signal.SIGTERM else (-signal.SIGKILL, "", "")
    )
    assert last not in _recorded(migrated_db_url)
    if stop == signal.SIGKILL:
        # Nothing can remove yoyo's lock for a killed process: the documented `yoyo break-lock` does.
        assert _locks(migrated_db_url) == 1
        with psycopg.connect(migrated_db_url) as db:
            db.execute("delete from yoyo_lock")
    assert _locks(migrated_db_url) == 0
    _migrates_to_the_end(migrated_db_url, tmp_path)


# `todo-api migrate` in a process of its own, stopped by SIGTERM right after the Nth COMMIT yoyo
# sends, before yoyo has noted that it sent it; prints how many it sent when it was not stopped.
_STOPPED_AFTER_A_COMMIT = """
import os, signal, sys
from api.ops import entry
from api.ops.cli import main

entry.stop_quietly_on_signals()
wanted, sent = int(sys.argv[1]), 0

def stop_after_a_commit(frame, event, arg):
    global sent
    if (
        event == "return"
        and frame.f_code.co_name == "execute"
        and frame.f_globals.get("__name__") == "yoyo.backends.base"
        and frame.f_locals.get("sql") == "COMMIT"
    ):
        sent += 1
        if sent == wanted:
            os.kill(os.getpid(), signal.SIGTERM)  # handled as the frame returns to yoyo's commit()

sys.setprofile(stop_after_a_commit)
try:
    main(["migrate"])
finally:
    sys.setprofile(None)
    if sent < wanted:
        print("commits", sent)
"""


def _stopped_after_commit(database_url: str, tmp_path: Path, commit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _STOPPED_AFTER_A_COMMIT, str(commit)],
        cwd=tmp_path, env=cli_env(DATABASE_URL=database_url), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_a_stop_right_after_any_commit_exits_143_and_leaves_no_lock_and_nothing_half_done(
    tmp_path: Path, migrated_db_url: str
) -> None:
    """A stop that landed between a COMMIT and yoyo's note that its transaction had ended left yoyo
    sure one was open: its release of the migration lock then failed on a SAVEPOINT outside any
    transaction, the lock stayed (every later migrate waited for it and failed until someone broke
    it), and migrate said "a migration failed (NoActiveSqlTransaction ...)", exit 1, where it had
    been stopped. Each COMMIT of a migrate that applies the last migration is tried in turn."""
    _without_the_last_migration(migrated_db_url)
    counted = _stopped_after_commit(migrated_db_url, tmp_path, 10_000)
    assert counted.returncode == 0, counted.stdout + counted.stderr
    commits = int(counted.stdout.split("commits ")[1].split()[0])
    assert commits >= 4, counted.stdout  # the lock's, a migration's, the policies', the lock's release

    for commit in range(1, commits + 1):
        _without_the_last_migration(migrated_db_url)
        result = _stopped_after_commit(migrated_db_url, tmp_path, commit)
        assert (result.returncode, result.stdout, result.stderr) == (143, "", ""), commit
        assert _locks(migrated_db_url) == 0, commit
        _migrates_to_the_end(migrated_db_url, tmp_path)
    assert list(tmp_path.iterdir()) == []
