"""A sequence behind its table's rows (rows loaded without the sequence's value: `pg_restore -t`,
logical replication, a copy by hand) makes the database assign a new row an id already stored. That
is the operator's to fix, not a sign that isolation is broken: it was answered 503
isolation-unverified, refusing every task request of the worker until a check completed clean, and
logged as a unique key the API does not expect, which pointed the operator the wrong way."""

import logging
from typing import Any

import psycopg
import pytest

from api.app import create_app
from api.db.errors import ASSIGNED_ID_KEYS
from tests.support import assert_problem, new_user, serving_client, settings_for

# Unique and primary keys holding a column that is GENERATED ALWAYS AS IDENTITY: no value a request
# sends can collide on one.
_KEYS_ON_ASSIGNED_IDS = """
select c.conname
from pg_constraint c
join pg_namespace n on n.oid = c.connamespace
where n.nspname = 'public' and c.contype in ('p', 'u')
  and exists (
      select from pg_attribute a
      where a.attrelid = c.conrelid and a.attnum = any (c.conkey) and a.attidentity = 'a'
  )
"""


def test_the_keys_the_api_takes_for_assigned_ids_are_the_schemas(
    migrated_db: psycopg.Connection[Any],
) -> None:
    keys = {name for (name,) in migrated_db.execute(_KEYS_ON_ASSIGNED_IDS).fetchall()}
    assert keys == ASSIGNED_ID_KEYS


@pytest.mark.parametrize(
    ("sequence", "write"),
    [("tasks_id_seq", "create"), ("task_events_id_seq", "rename")],
    ids=["task-id", "event-id"],
)
def test_a_sequence_behind_its_rows_is_503_for_that_write_alone_naming_the_fix(
    migrated_db: psycopg.Connection[Any],
    migrated_db_url: str,
    caplog: pytest.LogCaptureFixture,
    sequence: str,
    write: str,
) -> None:
    alice, bob = new_user(), new_user()
    with serving_client(create_app(settings_for(migrated_db_url))) as client:
        first = client.post(alice.tasks_url, json={"title": "first"}, headers=alice.headers)
        assert (
            client.post(alice.tasks_url, json={"title": "second"}, headers=alice.headers).status_code == 201
        )
        assert first.status_code == 201
        # The next id the sequence gives is one the table holds already.
        migrated_db.execute(f"select setval('public.{sequence}', 1, false)")
        migrated_db.commit()
        stored_before = migrated_db.execute("select id, title, version from tasks order by id").fetchall()
        with caplog.at_level(logging.ERROR, logger="api.http.problems"):
            if write == "create":
                refused = client.post(alice.tasks_url, json={"title": "third"}, headers=alice.headers)
            else:
                refused = client.put(
                    alice.task_url(first.json()["id"]), json={"title": "renamed"}, headers=alice.headers
                )
        # Every other request is served: nothing says isolation is in doubt.
        listed = client.get(bob.tasks_url, headers=bob.headers)
        hers = client.get(alice.tasks_url, headers=alice.headers)
        assert client.get("/readyz").status_code == 200

    body = assert_problem(refused, 503, "database-unavailable")
    assert "nothing was changed" in body["detail"], body
    assert "operator" in body["detail"], body
    assert refused.headers["Retry-After"].isdigit()
    assert listed.status_code == 200, listed.text
    assert hers.status_code == 200, hers.text
    assert [task["title"] for task in hers.json()] == ["second", "first"]
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "sequence" in errors[0], errors
    assert "Backup and restore" in errors[0], errors
    assert migrated_db.execute("select id, title, version from tasks order by id").fetchall() == stored_before
