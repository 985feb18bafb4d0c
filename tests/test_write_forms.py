"""Every write carries both of its forms (`api.tasks.queries._write`): with the upsert of its owner's
user row, and without it, for an owner whose row this worker has stored (docs/performance.md, "Writes
without the owner-row upsert"). Each form is one statement object per shape, so that it is compiled
and prepared once (api/db/statements.py), not once per request."""

from datetime import timedelta

from api.auth.principal import Principal
from api.db.database import Query
from api.tasks import queries
from api.tasks.models import TaskCreate

OWNER = Principal("alice", "alice@example.com", "Alice")


def _writes() -> dict[str, Query]:
    data = TaskCreate(title="Renew the passport")
    return {
        "create": queries.create_task(OWNER, data),
        "create once": queries.create_task_once(
            OWNER, data, "key", "hash", timedelta(hours=1), tombstones_kept=10
        ),
        "update": queries.update_task(OWNER, 1, {"title": "Renewed"}),
        "update if": queries.update_task(OWNER, 1, {"title": "Renewed"}, queries.Conditions([1])),
        "update if none": queries.update_task(OWNER, 1, {"title": "Renewed"}, queries.Conditions(None, [1])),
        "toggle": queries.set_completed(OWNER, 1, None),
        "toggle if": queries.set_completed(OWNER, 1, None, queries.Conditions([1], [2])),
        "complete": queries.set_completed(OWNER, 1, True),
        "delete": queries.delete_task(OWNER, 1),
        "delete if": queries.delete_task(OWNER, 1, queries.Conditions([1])),
        "delete if none": queries.delete_task(OWNER, 1, queries.Conditions(None, [1])),
    }


def test_every_write_carries_a_form_without_the_owner_row() -> None:
    for name, write in _writes().items():
        assert write.without_owner_row is not None, name
        assert "user_row" in str(write.statement), name
        assert "user_row" not in str(write.without_owner_row), name


def test_each_form_is_one_statement_per_shape() -> None:
    first, again = _writes(), _writes()
    for name, write in first.items():
        assert write.statement is again[name].statement, name
        assert write.without_owner_row is again[name].without_owner_row, name
