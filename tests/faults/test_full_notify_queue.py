"""A write whose wake-up the database refuses after its COMMIT, the NOTIFY queue being full (a session
that LISTENs sits in a transaction, so the queue cannot move past it): the write committed, so its
answer is 503 outcome-unknown, never database-unavailable, which promises that nothing was changed.

The queue is made as small as Postgres allows (max_notify_queue_pages, which takes a restart) and
filled by hand, with a cluster of the test's own.
"""

import logging
from typing import Any

import psycopg
import pytest

from api.app import create_app
from tests.faults.test_database_restart import EVERY_WAY
from tests.own_postgres import OwnPostgres
from tests.support import assert_problem, new_user, serving_client, settings_for


def _shrink_the_notify_queue(cluster: OwnPostgres) -> None:
    with psycopg.connect(cluster.superuser_url, autocommit=True) as superuser:
        superuser.execute("alter system set max_notify_queue_pages = 64")  # the least: 512 kB
    cluster.stop()
    cluster.start()


def _fill_the_notify_queue(listener: psycopg.Connection[Any], filler: psycopg.Connection[Any]) -> None:
    """Hold the queue with `listener`, listening inside a transaction, then fill it from `filler`."""
    listener.execute("listen held")
    listener.execute("begin")
    listener.execute("select 1")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too many notifications"):  # noqa: PT012
        for n in range(1000):
            filler.execute("select pg_notify('held', %s || repeat('x', 7900))", [str(n)])


@EVERY_WAY
def test_a_write_whose_wake_up_is_refused_after_its_commit_is_outcome_unknown_not_unchanged(
    own_postgres: OwnPostgres, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each was a 503 database-unavailable, "nothing was changed", though the task was created (or
    toggled): a client that trusted it and sent the create again stored it twice."""
    _shrink_the_notify_queue(own_postgres)
    alice = new_user()
    with serving_client(create_app(settings_for(own_postgres.url, **way))) as client:
        kept = client.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers)
        assert kept.status_code == 201
        with (
            psycopg.connect(own_postgres.superuser_url, autocommit=True) as listener,
            psycopg.connect(own_postgres.superuser_url, autocommit=True) as filler,
        ):
            _fill_the_notify_queue(listener, filler)
            with caplog.at_level(logging.WARNING, logger="api.http.problems"):
                created = client.post(alice.tasks_url, json={"title": "once"}, headers=alice.headers)
                toggled = client.patch(f"{alice.task_url(kept.json()['id'])}/complete", headers=alice.headers)
    for unknown in (created, toggled):
        assert_problem(unknown, 503, "outcome-unknown")
        assert unknown.headers["Retry-After"].isdigit()
    said = [record.getMessage() for record in caplog.records if record.name == "api.http.problems"]
    why = (
        "outcome unknown: the database failed once the write's transaction had ended:"
        " ProgramLimitExceeded: too many notifications in the NOTIFY queue"
    )
    assert said == [why, why]
    with psycopg.connect(own_postgres.superuser_url) as connection:
        stored = connection.execute(
            "select title, completed from tasks where user_id = %s order by id", [alice.id]
        ).fetchall()
    assert stored == [("kept", True), ("once", False)], "each write made, once"
