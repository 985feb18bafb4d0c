"""EXPLAIN ANALYZE the API's list query the way the API runs it: as todo_app, with app.user_id set.

The list must cost what the user's own rows cost, whatever the table's size: the plan must reach the
user's rows through a tasks_by_owner_* index. Explained twice: as the API sends it (with its redundant
`user_id = ...` filter, there for the planner), and with the policy alone deciding (filter removed).
"""

import re
from dataclasses import dataclass

import psycopg

from bench.dataset import user_id
from bench.pgbench_scripts import list_statement_for

_API_FILTER = re.compile(r"WHERE tasks\.user_id = .*? ORDER BY", re.DOTALL)
_INDEX_USED = re.compile(r"(?:Index(?: Only)? Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)")


@dataclass(frozen=True)
class Plan:
    variant: str
    text: str

    @property
    def indexes(self) -> list[str]:
        return _INDEX_USED.findall(self.text)

    @property
    def verdict(self) -> str:
        indexes = ", ".join(self.indexes) or "NO INDEX (sequential scan)"
        sort = "then sorts" if "Sort Key" in self.text else "no sort"
        return f"{self.variant}: uses {indexes}; {sort}"


def explain_list(url: str, user_number: int) -> list[Plan]:
    """Plans of the list query for one user under RLS: as the API sends it, and with the policy alone."""
    as_sent = list_statement_for(user_number).rstrip(";")
    policy_only = _API_FILTER.sub("ORDER BY", as_sent)
    plans = []
    with psycopg.connect(url) as connection:
        connection.read_only = True
        connection.execute(
            "select set_config('role', 'todo_app', true), set_config('app.user_id', %s, true)",
            [user_id(user_number)],
        )
        for variant, statement in (("as the API sends it", as_sent), ("policy alone", policy_only)):
            connection.execute(statement)  # once to warm the cache, as under load
            rows = connection.execute(f"explain (analyze, buffers, costs off) {statement}").fetchall()
            plans.append(Plan(variant, "\n".join(str(row[0]) for row in rows)))
        connection.rollback()
    return plans
