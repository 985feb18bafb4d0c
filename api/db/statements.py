"""Each statement shape compiled once, holding what every way of sending it needs.

`compiled` turns a SQLAlchemy statement into one `CompiledStatement`, cached per shape: SQLAlchemy's
compilation with the psycopg dialect (placeholders `%(name)s`, bound by psycopg), the values the
statement carries itself, and its prepared form. Nothing is compiled twice, so nothing depends on
two compilations agreeing on the names of their parameters.

The prepared form (`api.db.prepared` says where a connection may prepare) is made from that same
text. `prepare` is `PREPARE name AS <the text>` with each placeholder bound, by psycopg's own
client-side binding, to `$n`, its position in `parameters` (`_Position`): nothing is rewritten by
hand. `execute`, sent instead of the text, is `EXECUTE name(<the values>)`, in the same order, bound
by psycopg like any other value.

Postgres then parses, rewrites (applying the row-level security policies) and plans a statement
once per connection rather than once per request: compare "one message" with "one message,
prepared" in `python -m bench.transaction_paths`. Preparing decides nothing about who sees what.
Postgres re-applies the policies to a prepared statement whenever the role that runs it changes, so
the statement prepared by the login role runs under todo_app's policies, and every test of isolation
runs over prepared statements too.
"""

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql.elements import ClauseElement

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
_NAMES = itertools.count(1)


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    # The statement, its values bound by psycopg: client-side in the one message, server-side in a
    # pipeline.
    sql: str
    # Values the statement carries itself (constants such as a literal flag); requests add theirs.
    constants: Mapping[str, object]
    # The name a connection prepares it under.
    name: str
    # Every parameter once, in the order the EXECUTE passes them: `$n` is the nth.
    parameters: tuple[str, ...]
    # Sent in the transaction's message instead of `sql` once prepared.
    execute: str

    def params(self, values: Mapping[str, object]) -> dict[str, object]:
        return {**self.constants, **values}

    def prepare(self, connection: psycopg.AsyncConnection[Any]) -> str:
        """`PREPARE name AS <sql>`, sent once per connection, outside any transaction."""
        cursor = psycopg.AsyncClientCursor(connection)
        cursor.adapters.register_dumper(_Position, _PositionDumper)
        positions = {name: _Position(n) for n, name in enumerate(self.parameters, 1)}
        return f"PREPARE {self.name} AS {cursor.mogrify(self.sql, positions)}"


@lru_cache(maxsize=512)
def compiled(statement: ClauseElement) -> CompiledStatement:
    """The statement shape, compiled once; psycopg binds the values."""
    result = statement.compile(dialect=_DIALECT)
    parameters = tuple(result.params)
    constants = {name: value for name, value in result.params.items() if value is not None}
    name = f"todo_api_{next(_NAMES)}"
    values = ", ".join(f"%({parameter})s" for parameter in parameters)
    execute = f"EXECUTE {name}({values})" if values else f"EXECUTE {name}"
    return CompiledStatement(str(result), constants, name, parameters, execute)


@dataclass(frozen=True, slots=True)
class _Position:
    """A parameter's place in a prepared statement, bound into its text as `$n`."""

    number: int


class _PositionDumper(Dumper):
    """psycopg's client-side binding writes what `quote` returns where the placeholder stood."""

    def quote(self, obj: _Position) -> bytes:
        return f"${obj.number}".encode()

    def dump(self, obj: _Position) -> bytes:
        raise TypeError("a position is only ever bound into a statement's text")
