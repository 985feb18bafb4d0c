"""What the database layer tells the layers above when it cannot do its job right now."""

import re

import psycopg
from psycopg_pool import PoolTimeout


def in_one_line(error: BaseException) -> str:
    """An error for a log line: its class and the first line of what the server (or the driver) said,
    such as "OperationalError: connection failed: ... remaining connection slots are reserved ...".
    Without the message, a full server, a standby and a pooler refusing logins all read the same."""
    text = (error.diag.message_primary if isinstance(error, psycopg.Error) else None) or str(error)
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# A PL/pgSQL function as an error's context names it, in any language Postgres speaks: its name and
# parameter types, qualified unless the function's search_path shows it (the API's requests, and its
# functions, name everything with its schema), quoted where its name needs it (`"DBA rules"."no
# boom"(integer)`: the verification probe of stop 86).
_IDENTIFIER = r'(?:"(?:[^"]|"")+"|[^\s"().,]+)'
_SIGNATURE = re.compile(rf"(?:{_IDENTIFIER}\.)?{_IDENTIFIER}\([^)]*\)")
# The schema of the database's own bookkeeping, as a function's signature begins with it.
_BOOKKEEPING = "app."


def the_function_raising(context: str) -> str | None:
    """The function an error's context names first, the innermost call, where the error was raised:
    "PL/pgSQL function public.f() line 3 at RAISE" gives public.f(), as its German
    "PL/pgSQL-Funktion public.f() Zeile 3 bei RAISE" does; none for a function of schema app, the
    database's own bookkeeping."""
    found = _SIGNATURE.search(context.partition("\n")[0])
    return found[0] if found and not found[0].startswith(_BOOKKEEPING) else None


# The SQLSTATE class of "insufficient resources" (disk full, out of memory, ...): psycopg gives each
# code a class of its own, none of them a subclass of its InsufficientResources.
_INSUFFICIENT_RESOURCES = "53"


def out_of_a_resource(error: psycopg.Error) -> bool:
    """Whether the server refused the statement for want of a resource (its disk full, say): the server
    answered, and it lasts until an operator frees or raises what ran out."""
    return (error.sqlstate or "").startswith(_INSUFFICIENT_RESOURCES)


class LimitReached(Exception):  # noqa: N818 (a state, not a mistake)
    """The database refused a write that would pass one of its per-user limits; nothing changed.

    A limit is a check violation whose constraint is named `*_limit`; `limit` is that name
    (sql/migrations/0003_task_quota.sql raises `tasks_per_user_limit`).
    """

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class CheckRefused(Exception):  # noqa: N818 (a state, not a mistake)
    """A rule of the tables the API writes refused a row, one that is no per-user limit: a CHECK
    constraint, a NOT NULL or a column's type that a DBA added, or a DBA's trigger's RAISE or ASSERT
    (the API's own rules are refused before they reach the database); nothing changed. `rule` names
    it in words ("its rule dba_no_boom"), which is all the caller and the log are told: never the
    values."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


class AlreadyExists(Exception):  # noqa: N818 (a state, not a mistake)
    """A unique (or exclusion) constraint refused a row that another transaction has stored; nothing
    changed. The API expects it only where it catches it (a repeated Idempotency-Key); anywhere else
    it is a key the API does not ship, which a user could probe other users' rows with."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class MissingReference(Exception):  # noqa: N818 (a state, not a mistake)
    """A foreign key refused a row whose parent is not there (a user row deleted meanwhile, say);
    nothing changed."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(constraint)
        self.constraint = constraint


class UserShareExceeded(Exception):  # noqa: N818 (a state, not a mistake)
    """This user already holds their share of the worker's connections, and none came back in time."""

    def __init__(self, per_user: int) -> None:
        super().__init__(per_user)
        self.per_user = per_user


class SearchUnderway(Exception):  # noqa: N818 (a state, not a mistake)
    """Another search of this user's held their one search turn all along, and still runs
    (`api.db.fair_share`)."""


class IsolationBreach(Exception):  # noqa: N818 (a state of the database, not a mistake)
    """The database answered a statement the API sends in a way a database that isolates users as
    the check verified never does: its policies, roles, settings or schema are not what they were.
    The request is refused, and isolation is distrusted until a check completes clean."""

    def __init__(self, message: str | None, *, read_only: bool) -> None:
        super().__init__(message)
        self.read_only = read_only

    @property
    def statement(self) -> str:
        return "read" if self.read_only else "write"


class RowSecurityViolation(IsolationBreach):
    """The database refused a statement for row-level security (SQLSTATE 42501): a write the
    policies refuse, or, with row_security off, any read they would filter. The API sends neither
    to a sound database, so the policies, roles or settings are not what they should be."""

    def __str__(self) -> str:
        return f"the database refused a {self.statement} for row-level security: {self.args[0]}"


class UnknownName(IsolationBreach):
    """The database did not know a relation, column, function, type or schema the API names
    (SQLSTATE 42P01, 42703, 42883, 42704, 3F000). The schema is migrated before serving, so names
    resolve otherwise than when the check ran: the schema changed under the API (a table renamed),
    and what a name means is no longer what was verified."""

    def __str__(self) -> str:
        return f"the database did not know a name in a {self.statement} the API sends: {self.args[0]}"


class PrivilegeDenied(IsolationBreach):
    """The database refused a statement the API sends for want of a privilege, not for row-level
    security (SQLSTATE 42501): a grant to todo_app revoked, or the login role's membership in it.
    The check verified those privileges before serving, so they are not what it verified."""

    def __str__(self) -> str:
        return f"the database refused a {self.statement} for want of a privilege: {self.args[0]}"


class DatabaseUnavailable(Exception):  # noqa: N818 (a state, not a mistake)
    """The database cannot do the work now, and nothing was committed: nothing was sent, the
    transaction was read-only, or the server answered that it failed (and so rolled back)."""


class DatabaseBusy(DatabaseUnavailable):
    """No pooled connection came free within DB_POOL_TIMEOUT_SECONDS while other requests held them
    (waiting on row locks, say, or behind a pooler whose server connections are all taken): the
    database is reachable, and nothing was sent."""


class OutcomeUnknown(DatabaseUnavailable):
    """A write's transaction went out and no answer came back (it timed out, or the connection
    broke) with no proof that the server did not run it: it may have committed. Retrying blindly
    may write twice; retry with the same Idempotency-Key, or read first."""


class StatementCancelled(DatabaseUnavailable):
    """The database cancelled the statement and rolled the transaction back (SQLSTATE 57014): it ran
    past DB_STATEMENT_TIMEOUT_MS, waiting for a row lock another transaction held, say, or an operator
    cancelled it. The database answered, so it is reachable; only this request was not done."""


class LockWaitGivenUp(DatabaseUnavailable):
    """The database gave up waiting for a lock the statement needed and rolled the transaction back
    (SQLSTATE 55P03): a `lock_timeout` a DBA set for the login role or the database, shorter than
    DB_STATEMENT_TIMEOUT_MS, ran out behind another transaction's row or table lock. The database
    answered, so it is reachable; only this request was not done."""


class WritesRefused(DatabaseUnavailable):
    """The database refused a write for being read-only (SQLSTATE 25006) before it wrote anything: a
    failover that left DATABASE_URL naming a standby, or default_transaction_read_only set while
    serving. It answers, and reads are served; only writes are not."""


class OutOfResources(DatabaseUnavailable):
    """The database refused the statement for want of a resource and rolled the transaction back
    (SQLSTATE class 53): its disk full ("could not extend file"), out of memory, or past a limit an
    operator set (temp_file_limit). The database answered, so it is reachable, and nothing was
    changed; it stays so until an operator frees or raises what ran out."""


class TransactionConflict(DatabaseUnavailable):
    """Postgres rolled the transaction back whole to end a conflict with another one: a deadlock
    (SQLSTATE 40P01: a migration, or a DBA's transaction, took the same tables' locks in another
    order) or a serialization failure (40001: a read on a standby that recovery had to cancel, say).
    Nothing committed, the connection is sound, and the other side, no longer waiting, goes on:
    `Database.run` runs the transaction once more. Met again, it is this 503, which says so."""


class DatabaseFault(DatabaseUnavailable):
    """The database failed the statement with an error of its own and rolled the transaction back:
    an internal error (SQLSTATE class XX: a corrupted page or index, XX001 and XX002, or "cache lookup
    failed" while a migration or a DBA changed the schema, XX000), or any other error of the server's
    that psycopg counts as operational and no class above names (class 58: a failing disk's I/O
    error; class 54: a program limit). No statement the API sends asks for it, so it is no bug of the
    API's, and the database answered, so it is reachable; nothing was changed. It lasts until whatever
    changed the schema is done, or an operator repairs what failed."""


class AssignedIdTaken(DatabaseUnavailable):
    """The database assigned a new row an id its table already holds (SQLSTATE 23505 on a key in
    ASSIGNED_ID_KEYS): the identity's sequence is behind the table's rows, as after rows were loaded
    without the sequence's value (`pg_restore -t`, logical replication, a copy by hand). Nothing
    changed; the operator's fix is to move the sequence past the rows (docs/operations.md, "Backup
    and restore"). No value a request sends can collide on such a key, so unlike `AlreadyExists` it
    tells the caller nothing about another user's rows."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint


# The unique keys holding a column the database assigns (GENERATED ALWAYS AS IDENTITY: sql/migrations
# 0002, 0007 and 0008). tests/db/test_assigned_ids.py holds this to the catalog.
ASSIGNED_ID_KEYS = frozenset({"tasks_pkey", "tasks_owner_and_id_key", "task_events_pkey"})


# Every failure of `Database` that means "not now" rather than "this statement is wrong": no free
# connection in time, no connection at all, a cancelled statement. The HTTP layer answers each with
# a 503 and never needs to know which driver raised it; `OutcomeUnknown` with a 503 of its own. A
# psycopg error reaches the HTTP layer only from a transaction that cannot have committed: the one
# transaction helper turns every other into `OutcomeUnknown`.
UNAVAILABLE: tuple[type[Exception], ...] = (DatabaseUnavailable, PoolTimeout, psycopg.OperationalError)
