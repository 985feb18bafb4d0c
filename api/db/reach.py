"""What todo_app can reach, live (sql/checks/reach.sql) against what the package ships
(sql/checks/expected_reach.json): every difference is a finding.

The expected state is a file inside the package, never a table: no database role can rewrite it to
match a change made by hand. It is the same query run on a freshly migrated database, so a
migration or a policy file that changes what todo_app reaches changes it too; after such a change,
regenerate it with REGENERATE (tests/db/test_expected_reach.py fails, saying so, until it is).
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from api.db.sql_files import EXPECTED_REACH, REACH_CHECK, display_path, read_sql
from api.db.statements import NAMES_ONLY_PG_CATALOG

REGENERATE = "todo-api policies --write-expected"


@dataclass(frozen=True, order=True)
class Reach:
    """One object todo_app (or PUBLIC) can reach a row through, and how."""

    kind: str
    object: str
    detail: str

    @property
    def policy(self) -> tuple[str, str] | None:
        """(table, policy name) when this is a policy: `public.tasks "name"`."""
        if self.kind != "policy":
            return None
        table, _, quoted = self.object.partition(' "')
        return table, quoted.removesuffix('"')


# The catalog read as the checks are written to read it, whatever the DBA's (or the URL's) settings,
# for the caller's transaction alone. Names quoted only where they must be: quote_all_identifiers = on
# wrote every one quoted (`"app"."count_tasks"()`), so nothing the database held matched what the
# package ships, and migrate, policies and serve refused a sound database (the database-settings
# probe of stop 81). Backslashes in the checks' literals as written (`'pg\_%'`): with
# standard_conforming_strings off one meant "any character", and the findings of a table in a
# schema named like `pgx` vanished (the verification probe of stop 81).
CATALOG_AS_WRITTEN = (
    "pg_catalog.set_config('quote_all_identifiers', 'off', true),"
    " pg_catalog.set_config('standard_conforming_strings', 'on', true)"
)


async def read_reach(connection: psycopg.AsyncConnection[Any]) -> list[Reach]:
    """The live reach, read with an empty search_path so that every name is schema-qualified.

    Runs in the caller's transaction (the settings are local to it)."""
    await connection.execute(f"select {NAMES_ONLY_PG_CATALOG}, {CATALOG_AS_WRITTEN}")
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(read_sql(REACH_CHECK))
        return [Reach(*row) for row in await cursor.fetchall()]


@cache
def expected_reach(path: Path = EXPECTED_REACH) -> tuple[Reach, ...]:
    document = json.loads(read_sql(path))
    return tuple(Reach(*row) for row in document["reach"])


def render_expected(rows: Iterable[Reach], server_version: str) -> str:
    """The file's text: one object per line, sorted, so that a change reads as a small diff."""
    lines = ",\n".join(f"    {json.dumps([row.kind, row.object, row.detail])}" for row in sorted(set(rows)))
    return (
        "{\n"
        f'  "about": "What todo_app can reach after the shipped migrations and sql/policies/, read by '
        f"sql/checks/reach.sql on a fresh database (PostgreSQL {server_version}). Do not edit: run "
        f'`{REGENERATE}`.",\n'
        f'  "reach": [\n{lines}\n  ]\n}}\n'
    )


def write_expected(rows: Iterable[Reach], server_version: str, path: Path = EXPECTED_REACH) -> None:
    path.write_text(render_expected(rows, server_version), encoding="utf-8")
    expected_reach.cache_clear()


# Kinds of reach only a migration's GRANT gives, which `todo-api migrate` makes once, unlike the
# policies and row-level security it applies every time: revoked by hand or lost in a restore without
# privileges, they are back only from a GRANT, or from a restore that keeps them. Their detail is a
# privilege list as GRANT takes it: `SELECT, INSERT (id, "odd, name")`.
_GRANTED = frozenset({"schema", "table"})
_PRIVILEGE = re.compile(r'(\w+)(?: \(((?:"(?:[^"]|"")*"|[^()"])*)\))?')
_COLUMN = re.compile(r'"(?:[^"]|"")*"|[^,\s]+')


def _privileges(detail: str) -> frozenset[tuple[str, str | None]]:
    """A privilege list as (privilege, column) pairs, the column None for the whole relation."""
    pairs: set[tuple[str, str | None]] = set()
    for privilege, columns in _PRIVILEGE.findall(detail):
        pairs.update([(privilege, column) for column in _COLUMN.findall(columns)] or [(privilege, None)])
    return frozenset(pairs)


def _grant_back(kind: str, name: str, shipped: str) -> str:
    """The statement that gives todo_app what todo-api ships on an object (granting a privilege held
    already changes nothing)."""
    on = f"SCHEMA {name}" if kind == "schema" else name
    return f"GRANT {shipped} ON {on} TO todo_app"


@dataclass(frozen=True)
class Difference:
    message: str
    policy: tuple[str, str] | None
    # A GRANT the migrations made is missing, and nothing beyond it was granted: the statement that
    # gives it back.
    grant_back: str | None = None


def _on_a_table_out_of_reach(kind: str, name: str, unreached: set[str]) -> bool:
    """Whether a row is the row-level security of a table todo_app has no grant on: reach.sql reads
    it only where todo_app reaches the table, so it read as gone with the grant, though the table still
    has it (after a restore without privileges, a line for each table beside its grant's)."""
    return kind == "row level security" and name in unreached


def differences(live: Iterable[Reach], expected: Iterable[Reach]) -> list[Difference]:
    """Each object added, changed or gone, in words, in the order of the objects."""
    now = {(row.kind, row.object): row for row in live}
    shipped = {(row.kind, row.object): row for row in expected}
    unreached = {name for kind, name in shipped.keys() - now.keys() if kind == "table"}
    source = display_path(EXPECTED_REACH)
    found = []
    for key in sorted(now.keys() | shipped.keys()):
        kind, name = key
        live_row, expected_row = now.get(key), shipped.get(key)
        if live_row == expected_row or (live_row is None and _on_a_table_out_of_reach(kind, name, unreached)):
            continue
        grant_back = None
        if expected_row is None:
            assert live_row is not None
            message = f"{kind} {name} is not in what todo-api ships ({source}): {live_row.detail}"
        elif kind in _GRANTED and (
            live_row is None or _privileges(live_row.detail) < _privileges(expected_row.detail)
        ):
            grant_back = _grant_back(kind, name, expected_row.detail)
            has = "nothing" if live_row is None else live_row.detail
            message = (
                f"{kind} {name}: todo_app lacks grants todo-api ships: it has {has}; shipped: "
                f"{expected_row.detail}; to grant them back, as the owner: {grant_back}"
            )
        elif live_row is None:
            message = f"{kind} {name} is shipped by todo-api but gone: {expected_row.detail}"
        else:
            message = (
                f"{kind} {name} differs from what todo-api ships: it is {live_row.detail}; "
                f"shipped: {expected_row.detail}"
            )
        either = live_row or expected_row
        found.append(Difference(message, either.policy if either else None, grant_back))
    return found
