"""Mistakes `todo-api` catches before it starts anything: a port already taken, the development
database offered beyond this machine, a Postgres release older than the oldest supported, a database
that is not migrated, does not isolate users, refuses every write or is not encoded in UTF-8, more
connections than Postgres allows, prepared statements asked of a pooler that loses them, a
DATABASE_DIRECT_URL that reaches another database than DATABASE_URL, and a variable that was meant to
be a setting but is misspelt. `check_database` runs the database's, once for every worker.

Each is one message: a refusal is a CommandFailed, a near miss a warning.
"""

import asyncio
import difflib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from api.db.host_lookup import LookupBoundedAsyncConnection, LookupBoundedConnection
from api.db.prepared import preparing_setting, reaches_postgres_itself, sessions_pass_between_clients
from api.db.reach import differences, expected_reach, read_reach
from api.db.urls import libpq_url
from api.ops.failures import CommandFailed, database_failure
from api.settings import Settings

logger = logging.getLogger("api.ops.serve")

# How alike a variable's name must be to a setting's (difflib's ratio) to be taken for a misspelling
# of it: DATABSE_URL is 0.96 from DATABASE_URL, while OTEL_EXPORTER_OTLP_HEADERS, a variable of the
# OpenTelemetry SDK, is 0.79 from OTEL_EXPORTER_OTLP_ENDPOINT.
_NEAR_MISS_RATIO = 0.9
# What a service's settings are often prefixed with (pydantic-settings' env_prefix, Spring's, many
# Dockerfiles'); ours have none, so TODO_API_DATABASE_URL went unread and the embedded database served.
_PREFIXES = ("TODO_API_", "TODOAPI_", "TODO_")
# The OpenTelemetry SDK's endpoints of the signals the API does not export, which a shared
# environment may set for other programs: as alike as a misspelling to the traces' endpoints, but none.
_OTHER_SIGNALS_ENDPOINTS = frozenset(
    {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"}
)
# The fix for grants to todo_app that its migrations made and that are missing, which migrating
# cannot make again (each migration runs once). Which way they went only the DBA knows: a grant revoked
# by hand beside another change reads like a restore without privileges, which lost the migrations'
# revokes too (the second verification probe of stop 80 was told to restore a database never restored).
GRANTS_MISSING = (
    "Grants to todo_app that its migrations made are missing, and `todo-api migrate` makes each only "
    "once. Revoked by hand: run the GRANT above as the owner. Lost in a restore (pg_restore "
    "--no-privileges, or into a cluster before todo_app existed there): restore it again, with its "
    "privileges and after the roles; a restore without them also lost the migrations' revokes "
    "(functions todo_app may call are then listed above), which no GRANT mends (docs/operations.md, "
    '"Backup and restore")'
)
# What `todo-api migrate` leaves when no grant is missing.
CHANGED_BY_HAND = (
    "`todo-api migrate` mends policies and row-level security, not these: put back by hand what was "
    "changed by hand, as the owner (or a superuser, for a role todo_app was made a member of); after a "
    'restore without privileges, restore again with them (docs/operations.md, "Backup and restore")'
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_the_development_database_beyond_loopback(host: str) -> None:
    """The embedded database comes with a generated secret and open development CORS: this machine only."""
    if not is_loopback(host):
        raise CommandFailed(
            f"refusing to serve the embedded development database on --host {host}: it is for this "
            "machine only (127.0.0.1); set DATABASE_URL to serve a database of your own on other addresses"
        )


def refuse_a_taken_port(host: str, port: int) -> tuple[str, int]:
    """Fail in one line when `host:port` cannot be listened on, before anything starts; return the IP
    address and port probed, the ones to serve on: the HTTP server takes an address, never a name
    (localhost), and port 0 becomes the free port the kernel gave the probe, which serve announces.

    The HTTP server binds with SO_REUSEPORT, which would let a second server share the port and split
    its requests; this probe binds without it, so it fails while anyone listens there. A program of
    the same user that binds with SO_REUSEPORT after start-up still shares it: granian has no option
    against it (README.md, Deploying).
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise CommandFailed(f"cannot listen on --host {host}: {error.strerror}") from None
    except UnicodeError:
        # Raised by the name's IDNA encoding, before any lookup: a label over 63 characters, or a byte
        # the locale could not decode.
        raise CommandFailed(
            f"cannot listen on --host {host}: not a host name or an address; give one of this machine's "
            "(127.0.0.1, ::1, 0.0.0.0)"
        ) from None
    with socket.socket(family, kind, protocol) as probe:
        # Connections of an earlier server still in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CommandFailed(_taken(host, port)) from None
            if error.errno == errno.EACCES:
                raise CommandFailed(
                    f"not allowed to listen on port {port}: ports below 1024 need root; choose another --port"
                ) from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise CommandFailed(
                    f"cannot listen on --host {host}: not an address of this machine"
                ) from None
            raise CommandFailed(f"cannot listen on {host}:{port}: {error.strerror}") from None
        bound: tuple[str, int] = probe.getsockname()[:2]
    return bound


def _taken(host: str, port: int) -> str:
    return (
        f"port {port} on {host} is already in use (by another todo-api serve, or another program): stop "
        "it, or choose another --port"
    )


@contextmanager
def holding_the_port(host: str, port: int) -> Iterator[tuple[str, int]]:
    """refuse_a_taken_port, then keep the port bound until the block ends, so that nothing takes it
    while serve starts (seconds: the database's checks, an embedded Postgres): not another serve, whose
    probe would pass and whose workers would then share the port with ours, nor the kernel handing it
    to another program asking for any free port (`--port 0`, ours included).

    The holder sets SO_REUSEPORT alone: the HTTP server's sockets set it too, so they bind beside it,
    while a probe, a socket without it, and the kernel's choice of a free port (which never shares one
    so) are refused. It never listens, so no connection waits on it. Processes forked from here
    (granian's workers) close their copy at once, so that a worker that outlives this process (a
    `kill -9` of serve) holds the port no longer than its listener, not until it has exited.
    """
    address, port = refuse_a_taken_port(host, port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((address, port))
        except OSError as error:
            # Taken in the instant between the probe and the holder.
            if error.errno == errno.EADDRINUSE:
                raise CommandFailed(_taken(host, port)) from None
            raise CommandFailed(f"cannot listen on {host}:{port}: {error.strerror}") from None
        os.register_at_fork(after_in_child=holder.close)
        yield address, port


def secret_doubts(settings: Settings) -> list[str]:
    """A warning when BETTER_AUTH_SECRET has white space or a line break at an end (a secret made with
    `echo`, or quoted in a file no shell reads): tokens are checked against it byte for byte, so it is
    used as written, since the frontend may hold the very same bytes; but where it does not, every
    HS256 token is a 401, and nothing else says why."""
    secret = settings.better_auth_secret
    if secret is None:
        return []
    text = secret.get_secret_value()
    if text == text.strip() and not (text[:1] in ("'", '"') and text[-1:] == text[:1]):
        return []
    return [
        "BETTER_AUTH_SECRET has white space, a line break or quotes at its ends, and is used as written: if"
        " Better Auth's secret has none, every HS256 token will be refused (401)"
    ]


def empty_database_url(environment: Mapping[str, str], settings: Settings) -> list[str]:
    """A warning when the environment sets DATABASE_URL to nothing and nothing else sets it (`.env`
    may): it reads as unset, as the empty line `.env.example` ships does, so the command uses the
    embedded database; in the environment it is more often a value that did not arrive
    (`DATABASE_URL=$(cat /run/secrets/url)` of a file not mounted) than a choice, and a `serve` on
    loopback would take production's tokens into a new database in DATA_DIR."""
    empty = any(name.upper() == "DATABASE_URL" and value == "" for name, value in environment.items())
    if not empty or settings.database_url is not None:
        return []
    return [
        "DATABASE_URL is set but empty, which reads as unset: the embedded database (DATA_DIR) is used. "
        "Unset it to mean that"
    ]


def _read_either_way(environment: Mapping[str, str], env_file: Iterable[str], one: str, other: str) -> bool:
    """Whether two names of one setting, in different cases, leave which value is read to chance: both
    in the environment with different values, or both in .env (whose values are not read here). One in
    each is no doubt: the environment comes before .env."""
    in_environment = one in environment and other in environment and environment[one] != environment[other]
    return in_environment or (one in env_file and other in env_file)


def near_misses(
    environment: Mapping[str, str], settings: Iterable[str], *, env_file: Iterable[str] = ()
) -> list[str]:
    """A warning for each variable that looks like one of ours (close to a setting's name, or to one
    after a prefix such as TODO_API_, in any case) but is not one, and for each OpenTelemetry variable
    that only .env sets: set, it would be ignored without a word; and for a setting set twice in
    different cases (`db_pool_size` and `DB_POOL_SIZE`) in one place, since settings ignore case and
    which of the two is read then depends on their order. `env_file`: the names the .env file sets,
    read as settings too."""
    names = sorted(name.upper() for name in settings)
    env_file = set(env_file)
    where = dict.fromkeys(env_file, " in .env") | dict.fromkeys(environment, "")
    warnings = []
    for variable in sorted(where):
        upper = variable.upper()
        if upper in names:
            if variable != upper and _read_either_way(environment, env_file, variable, upper):
                warnings.append(
                    f"{variable} is set{where[variable]} and so is {upper}: settings ignore case, and which"
                    " of the two is read is not defined: keep one"
                )
            continue
        prefix = next((prefix for prefix in _PREFIXES if upper.startswith(prefix)), "")
        if prefix and (
            close := difflib.get_close_matches(
                upper.removeprefix(prefix), names, n=1, cutoff=_NEAR_MISS_RATIO
            )
        ):
            warnings.append(
                f"{variable} is set{where[variable]} but is no setting: settings have no prefix; "
                f"did you mean {close[0]}?"
            )
        elif upper not in _OTHER_SIGNALS_ENDPOINTS and (
            close := difflib.get_close_matches(upper, names, n=1, cutoff=_NEAR_MISS_RATIO)
        ):
            warnings.append(f"{variable} is set{where[variable]} but is no setting; did you mean {close[0]}?")
        elif variable.startswith("OTEL_") and where[variable]:
            # The SDK reads os.environ, never .env: collector credentials written there went unsent.
            warnings.append(
                f"{variable} is set{where[variable]}, but the OpenTelemetry SDK reads its variables from the"
                " environment only: export it"
            )
    return warnings


# The oldest Postgres release the API runs on (docs/operations.md, "Postgres releases"). Migration
# 0007's foreign key sets only task_id to NULL on delete (ON DELETE SET NULL (task_id), PostgreSQL 15):
# on 14 it failed half-way, six migrations applied, and PostgreSQL 14 is out of support since
# November 2026. That page names the releases tested, and how to test another.
OLDEST_POSTGRES_RELEASE = 15

# The server's release, as a number to compare (140023 is 14.23) and as it names itself.
RELEASE_STATE = "select current_setting('server_version_num')::int, current_setting('server_version')"


def release_refusal(*, version_num: int, version: str, setting: str) -> str | None:
    """Why the API cannot run on the Postgres `setting`'s URL reaches, and the fix; None when it can."""
    if version_num // 10000 >= OLDEST_POSTGRES_RELEASE:
        return None
    return (
        f"{setting} reaches PostgreSQL {version}, and todo-api needs PostgreSQL "
        f'{OLDEST_POSTGRES_RELEASE} or later (docs/operations.md, "Postgres releases"): upgrade it '
        f"(pg_upgrade; on Neon, a project on a later release), or point {setting} at a later one"
    )


async def refuse_an_unsupported_postgres(connection: psycopg.AsyncConnection[Any], setting: str) -> None:
    """Fail in one line when the server is older than OLDEST_POSTGRES_RELEASE (`release_refusal`)."""
    cursor = await connection.execute(RELEASE_STATE)
    row = await cursor.fetchone()
    assert row is not None
    refusal = release_refusal(version_num=int(row[0]), version=str(row[1]), setting=setting)
    if refusal is not None:
        raise CommandFailed(f"Refusing to serve: {refusal}")


# Whether the database refuses every write: a standby replaying its primary's WAL (pg_basebackup -R,
# a replica a failover left behind), or sessions whose transactions are read-only unless they ask
# otherwise (default_transaction_read_only, from ALTER ROLE, ALTER DATABASE, the server's
# configuration or the URL's options). Either way a write is refused only once it is sent.
READ_ONLY_STATE = "select pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool"


def read_only_refusal(*, in_recovery: bool, read_only: bool, setting: str) -> str | None:
    """Why every write through `setting`'s URL would be refused, and the fix; None when none would be."""
    if in_recovery:
        return (
            f"{setting} reaches a standby in recovery (pg_is_in_recovery()), which refuses every write: "
            f"point {setting} at the primary"
        )
    if read_only:
        return (
            f"{setting}'s sessions are read-only (default_transaction_read_only is on), so every write "
            "would be refused: turn it off where it is set (ALTER ROLE or ALTER DATABASE ... RESET "
            f"default_transaction_read_only, the server's configuration, the URL's options), or point "
            f"{setting} at a writable database"
        )
    return None


async def refuse_a_read_only_database(connection: psycopg.AsyncConnection[Any], setting: str) -> None:
    """Fail in one line when the database refuses every write: serving there, every write was a 500."""
    cursor = await connection.execute(READ_ONLY_STATE)
    row = await cursor.fetchone()
    assert row is not None
    refusal = read_only_refusal(in_recovery=bool(row[0]), read_only=bool(row[1]), setting=setting)
    if refusal is not None:
        raise CommandFailed(f"Refusing to serve: {refusal}")


# The database's encoding. A title or description is any Unicode text, and Postgres refuses to store a
# character its database's encoding lacks: in a LATIN1 database a title of 東京 was a 500. SQL_ASCII
# checks nothing and counts bytes where the API counts characters.
ENCODING_STATE = "select pg_catalog.current_database(), pg_catalog.current_setting('server_encoding')"


def _as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def encoding_refusal(*, database: object, encoding: object, setting: str) -> str | None:
    """Why `setting`'s database cannot hold what users write, and the fix; None when it can. Its
    name and encoding as `ENCODING_STATE` reads them: bytes from a SQL_ASCII database's session, whose
    client_encoding is SQL_ASCII (named "b'SQL_ASCII'" as Python writes bytes before)."""
    database, encoding = (_as_text(value) for value in (database, encoding))
    if encoding == "UTF8":
        return None
    return (
        f"database {database}, which {setting} reaches, is encoded in {encoding}, which cannot store "
        "every title a user may send (Postgres refuses a character its encoding lacks), and a "
        "database's encoding cannot be changed: create one with ENCODING 'UTF8' (CREATE DATABASE ... "
        f"ENCODING 'UTF8' TEMPLATE template0), migrate it, move the data there and point {setting} at it"
    )


async def refuse_a_database_not_in_utf8(connection: psycopg.AsyncConnection[Any], setting: str) -> None:
    """Fail in one line when the database cannot store every title (`encoding_refusal`)."""
    cursor = await connection.execute(ENCODING_STATE)
    row = await cursor.fetchone()
    assert row is not None
    refusal = encoding_refusal(database=row[0], encoding=row[1], setting=setting)
    if refusal is not None:
        raise CommandFailed(f"Refusing to serve: {refusal}")


# How the database lowercases, which the list's search (`q`) compares with (README, "The API"): beyond
# A to Z (one made with the C or POSIX locale lowercases A to Z alone), and one character at a time as
# C.UTF-8 does, whatever comes before or after it (ICU, and Postgres 18's builtin PG_UNICODE_FAST,
# lowercase by Unicode's full rules: a final capital sigma becomes ς, so a search for ΟΔΟΣ missed
# οδοσ, the PG 18 probe of stop 83; a Turkish locale lowercases I to a dotless i, so title missed TITLE, its
# verification probe). Asked of lower() itself, whatever the locale's name or provider.
LOWERCASE_STATE = "select pg_catalog.lower('É') = 'é', pg_catalog.lower('ΟΔΟΣ TITLE') = 'οδοσ title'"
_MADE_IN_C_UTF8 = (
    "A database made with a UTF-8 locale whose provider is libc or builtin (C.UTF-8) lowercases every"
    " letter, one character at a time: CREATE DATABASE ... LOCALE_PROVIDER libc LOCALE 'C.UTF-8' TEMPLATE"
    " template0, migrate it and move the data there"
)


async def warn_of_a_search_that_ignores_case_otherwise_than_documented(
    connection: psycopg.AsyncConnection[Any], setting: str
) -> None:
    """Say so when a search would find ÉCLAIR by ÉCLAIR alone, not by éclair, or ΟΔΟΣ not by οδοσ."""
    cursor = await connection.execute(LOWERCASE_STATE)
    row = await cursor.fetchone()
    assert row is not None
    beyond_ascii, one_at_a_time = row
    if not beyond_ascii:
        logger.warning(
            "todo-api: the database that %s reaches lowercases A to Z alone (it was made with the C or POSIX"
            " locale), so a search (q) ignores the case of ASCII letters only: éclair does not find"
            " ÉCLAIR. %s",
            setting,
            _MADE_IN_C_UTF8,
        )
    elif not one_at_a_time:
        logger.warning(
            "todo-api: the database that %s reaches lowercases some letters otherwise than C.UTF-8, one"
            " character at a time, does (by Unicode's full rules, as ICU and PostgreSQL 18's"
            " PG_UNICODE_FAST do, or as a Turkish locale does), so a search (q) misses some titles written"
            " in another case: a final Σ becomes ς there, and οδοσ does not find ΟΔΟΣ, or I a dotless i,"
            " and title does not find TITLE. %s",
            setting,
            _MADE_IN_C_UTF8,
        )


# What each worker opens beside its pool of DB_POOL_SIZE: the readiness check's connection, the
# isolation check's and the LISTEN one for live changes (docs/operations.md, "More API workers and hosts").
EXTRA_CONNECTIONS_PER_WORKER = 3


async def refuse_more_connections_than_postgres_allows(
    connection: psycopg.AsyncConnection[Any], *, reaches_postgres: bool, workers: int, pool_size: int
) -> None:
    """Fail in one line when the workers' connections cannot all fit in max_connections, less those
    other sessions hold now (the other instances of a fleet, an older release still serving beside
    this one), or in the CONNECTION LIMIT of the login role or of the database, less what their other
    sessions hold: past any of them, Postgres refuses them, and each worker failed to start with a
    traceback until granian gave up on the loop.

    Only on a connection to Postgres itself (`reaches_postgres`, as `reaches_postgres_itself` found
    it): behind a pooler, how many server connections there are is the pooler's business, not
    max_connections'."""
    if not reaches_postgres:
        return
    cursor = await connection.execute(
        "select current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true)::int, 0),"  # Postgres 16+
        " (select count(*) from pg_stat_activity"
        "  where backend_type = 'client backend' and pid <> pg_backend_pid())::int,"
        # A role's and a database's CONNECTION LIMIT (-1: none) bind every session but a superuser's.
        " login.rolname, login.rolconnlimit, login.rolsuper,"
        " (select count(*) from pg_stat_activity where usesysid = login.oid"
        "  and backend_type = 'client backend' and pid <> pg_backend_pid())::int,"
        " db.datname, db.datconnlimit,"
        " (select count(*) from pg_stat_activity where datid = db.oid"
        "  and backend_type = 'client backend' and pid <> pg_backend_pid())::int"
        " from pg_roles login, pg_database db"
        " where login.rolname = session_user and db.datname = current_database()"
    )
    row = await cursor.fetchone()
    assert row is not None
    most, reserved, held, role, role_limit, superuser, role_held, database, database_limit, database_held = (
        row
    )
    needed = workers * (pool_size + EXTRA_CONNECTIONS_PER_WORKER)
    each = f"{pool_size} DB_POOL_SIZE + {EXTRA_CONNECTIONS_PER_WORKER} each"
    need = f"{workers} workers need {needed} connections ({each})"
    allowed = f"max_connections {most} less {reserved} reserved"
    if needed > most - reserved:
        raise CommandFailed(
            f"{need}, but Postgres allows {most - reserved} ({allowed}): lower DB_POOL_SIZE or "
            "--workers, or raise max_connections"
        )
    if needed > most - reserved - held:
        raise CommandFailed(
            f"{need}, but Postgres has {max(most - reserved - held, 0)} free: other sessions hold {held} "
            f"of the {most - reserved} it allows ({allowed}), other instances of the API among them, "
            "an older release still serving say: start this one once they let go, lower DB_POOL_SIZE "
            "or --workers, or raise max_connections to fit every instance at once"
        )
    if superuser:
        return
    for limited, limit, held_there, raise_it in (
        # Quoted as Postgres reads them, so that the advice runs as written for any name (Todo-Login).
        (
            f"the login role {role}",
            role_limit,
            role_held,
            f"ALTER ROLE {sql.Identifier(role).as_string()} CONNECTION LIMIT",
        ),
        (
            f"the database {database}",
            database_limit,
            database_held,
            f"ALTER DATABASE {sql.Identifier(database).as_string()} CONNECTION LIMIT",
        ),
    ):
        if limit >= 0 and needed > limit - held_there:
            raise CommandFailed(
                f"{need}, but {limited} may have {limit} (its CONNECTION LIMIT), of which other sessions "
                f"hold {held_there}: lower DB_POOL_SIZE or --workers, or raise it ({raise_it} "
                f"{needed + held_there}, or -1 for none)"
            )


async def refuse_prepared_statements_the_pooler_loses(
    conninfo: str,
    *,
    reaches_postgres: bool,
    prepare_threshold: int | None,
    prepared_statements: str,
) -> None:
    """Fail in one line when the settings ask for prepared statements (DB_PREPARE_THRESHOLD, or
    DB_PREPARED_STATEMENTS=on) and DATABASE_URL is a pooler that passes server sessions from client
    to client: there a statement may be missing, or another client's, in the next transaction. With
    DB_PREPARE_THRESHOLD every worker's pool failed to start (PoolTimeout, the cause only in the
    Postgres log); with `on`, requests failed. A pooler in session mode, or one that keeps
    protocol-level statements (PgBouncer 1.21+ with max_prepared_statements), passes, as does Postgres
    itself (`reaches_postgres`)."""
    protocol_level = prepare_threshold is not None
    if not protocol_level and prepared_statements != "on":
        return
    if reaches_postgres:
        return
    if not await asyncio.to_thread(sessions_pass_between_clients, conninfo, protocol_level=protocol_level):
        return
    setting = preparing_setting(prepare_threshold=prepare_threshold, prepared_statements=prepared_statements)
    why = (
        " that does not keep protocol-level prepared statements (PgBouncer 1.20 or older, or without "
        "max_prepared_statements)"
        if protocol_level
        else ", where a statement prepared in one transaction may be gone in the next"
    )
    raise CommandFailed(
        f"{setting.name} asks for prepared statements, but DATABASE_URL reaches a pooler in transaction "
        f"mode{why}: {setting.fix}"
    )


# Which server and database a session is in, as a role with no privileges can ask: when the server's
# postmaster started, to the microsecond, tells it from any other server, a standby or a restored copy
# of the same cluster included, and reads the same through a pooler in front of it.
# The server's start as a number, which reads the same whatever DateStyle and TimeZone the DBA gave
# the sessions.
_SERVER_AND_DATABASE = "select extract(epoch from pg_postmaster_start_time()), current_database()"


def _when(started: object) -> str:
    """A server's start, as `_SERVER_AND_DATABASE` gives it, for a person: in UTC, to the microsecond
    that tells two servers apart."""
    return datetime.fromtimestamp(float(str(started)), UTC).isoformat(sep=" ", timespec="microseconds")


async def check_direct_url(url: str, settings: Settings, served: tuple[object, str]) -> None:
    """DATABASE_DIRECT_URL, for each worker's LISTEN connection: one that can never be had would be
    retried for as long as it serves, logged as lost though it never was; one that reaches a pooler
    would never hear a write, and each worker leaves it alone (`api.db.listener.listen_url`): said
    here, once for every worker. A NOTIFY is heard only in the database of the server that sent it,
    and a standby refuses LISTEN: a URL that reaches either elsewhere than DATABASE_URL's `served`
    (`_SERVER_AND_DATABASE`) would leave every stream without its wake-ups, and is refused."""
    conninfo = libpq_url(url, "DATABASE_DIRECT_URL", connect_timeout=settings.db_connect_timeout_seconds)
    try:
        async with await LookupBoundedAsyncConnection.connect(
            conninfo, autocommit=True, prepare_threshold=None
        ) as connection:
            reaches_postgres = await reaches_postgres_itself(connection)
            cursor = await connection.execute(f"{_SERVER_AND_DATABASE}, pg_is_in_recovery()")
            row = await cursor.fetchone()
    except psycopg.OperationalError as error:
        raise database_failure(error, url, "DATABASE_DIRECT_URL") from None
    if not reaches_postgres:
        logger.warning(
            "todo-api: DATABASE_DIRECT_URL reaches a pooler, not Postgres itself: LISTEN through it"
            " would never hear a write, so it is not used; set DATABASE_DIRECT_URL to a URL that"
            " reaches Postgres itself (on Neon, the one without -pooler)"
        )
        return
    assert row is not None
    started, database, in_recovery = row
    elsewhere = "LISTEN there would never hear a write: point DATABASE_DIRECT_URL at"
    if in_recovery:
        raise CommandFailed(
            "Refusing to serve: DATABASE_DIRECT_URL reaches a standby in recovery, which refuses LISTEN "
            "and never hears a write: point it at the primary, the server DATABASE_URL reaches"
        )
    if database != served[1]:
        raise CommandFailed(
            f"Refusing to serve: DATABASE_DIRECT_URL reaches database {database}, and DATABASE_URL "
            f"database {served[1]}: {elsewhere} {served[1]}"
        )
    if started != served[0]:
        raise CommandFailed(
            "Refusing to serve: DATABASE_DIRECT_URL reaches another Postgres server than DATABASE_URL "
            f"(one started at {_when(started)}, DATABASE_URL's at {_when(served[0])}): {elsewhere} the "
            "server DATABASE_URL reaches"
        )


def _connect(url: str, setting: str, connect_timeout_seconds: int) -> psycopg.Connection[tuple[Any, ...]]:
    conninfo = libpq_url(url, setting, connect_timeout=connect_timeout_seconds)
    return LookupBoundedConnection.connect(conninfo, autocommit=True, prepare_threshold=None)


def _server_and_database(connection: psycopg.Connection[tuple[Any, ...]]) -> tuple[object, str]:
    row = connection.execute(_SERVER_AND_DATABASE).fetchone()
    assert row is not None
    return row[0], str(row[1])


def refuse_migrating_another_database(
    migration_url: str, database_url: str, connect_timeout_seconds: int
) -> None:
    """MIGRATION_DATABASE_URL (the owner's, Neon's direct host) and DATABASE_URL (the login role's,
    the pooled host) differ in user, host and port on purpose, and must reach one database: migrate
    migrated one while serve served another (not migrated, or left a release behind). Compared as
    the servers answer (`_SERVER_AND_DATABASE`), which a pooler in front does not change. A
    DATABASE_URL that cannot be used yet (its role is the one `--login-role` creates, or gives its
    password) cannot be compared, and `serve` names what is wrong with it."""
    served_role = conninfo_to_dict(libpq_url(database_url)).get("user")
    try:
        with _connect(migration_url, "MIGRATION_DATABASE_URL", connect_timeout_seconds) as connection:
            migrated = _server_and_database(connection)
            # Asked here, never by trying: a login PgBouncer fails (a role `--login-role` has yet to
            # create) makes it hold every new login as that role for its server_login_retry, so the
            # `serve` started next would wait in vain.
            can_log_in = served_role is None or connection.execute(
                "select exists (select from pg_catalog.pg_roles where rolname = %s and rolcanlogin)",
                [served_role],
            ).fetchone() == (True,)
    except psycopg.OperationalError as error:
        raise database_failure(error, migration_url, "MIGRATION_DATABASE_URL") from None
    if not can_log_in:
        return
    try:
        with _connect(database_url, "DATABASE_URL", connect_timeout_seconds) as connection:
            served = _server_and_database(connection)
    except psycopg.OperationalError:
        return
    fix = "point both at the database serve serves; nothing was changed"
    if migrated[1] != served[1]:
        raise CommandFailed(
            f"refusing to migrate: MIGRATION_DATABASE_URL reaches database {migrated[1]}, and DATABASE_URL "
            f"database {served[1]}: {fix}"
        )
    if migrated[0] != served[0]:
        raise CommandFailed(
            "refusing to migrate: MIGRATION_DATABASE_URL reaches another Postgres server than DATABASE_URL "
            f"(one started at {_when(migrated[0])}, DATABASE_URL's at {_when(served[0])}): {fix}"
        )


async def check_database(url: str, settings: Settings, workers: int) -> None:
    """What each worker checks before serving, checked once here so that a failure is one message;
    and that Postgres has a connection for every one the workers will open."""
    # Imported here, as the CLI imports them: they import prometheus_client, which must not be
    # imported before `serve` has pointed it at its workers' folder (api/ops/cli.py).
    from api.db.isolation import isolation_findings, only_drift, release_mismatch_on
    from api.ops.policy_audit import lock_holders

    conninfo = libpq_url(url, connect_timeout=settings.db_connect_timeout_seconds)
    try:
        async with await LookupBoundedAsyncConnection.connect(conninfo, autocommit=True) as connection:
            # In a transaction block, the shape of every request: a pooler that refuses one (in
            # statement mode) ends the session saying why, which the isolation check took for a
            # finding, leaving the next query only "the connection is closed".
            async with connection.transaction():
                await refuse_an_unsupported_postgres(connection, "DATABASE_URL")
            await refuse_a_read_only_database(connection, "DATABASE_URL")
            await refuse_a_database_not_in_utf8(connection, "DATABASE_URL")
            await warn_of_a_search_that_ignores_case_otherwise_than_documented(connection, "DATABASE_URL")
            cursor = await connection.execute(_SERVER_AND_DATABASE)
            served = await cursor.fetchone()
            assert served is not None
            findings = await isolation_findings(connection)
            causes = {finding.cause for finding in findings}
            # Differences from the shipped schema alone are what a release between the database's and
            # this one makes: named in one line when the record says which (api/db/schema_release.py).
            mismatch = await release_mismatch_on(connection) if only_drift(findings) else None
            # A lock the check waited for in vain (DDL, a migration in progress) is no matter for
            # `todo-api migrate`: say who held it.
            if "lock held" in causes:
                raise CommandFailed(
                    "Refusing to serve: the isolation check could not complete: a lock was held on what "
                    f"it reads, by {await lock_holders(connection)}; end that transaction (or wait for "
                    "it), then start again"
                )
            reaches_postgres = await reaches_postgres_itself(connection)
            await refuse_more_connections_than_postgres_allows(
                connection,
                reaches_postgres=reaches_postgres,
                workers=workers,
                pool_size=settings.db_pool_size,
            )
            await refuse_prepared_statements_the_pooler_loses(
                conninfo,
                reaches_postgres=reaches_postgres,
                prepare_threshold=settings.db_prepare_threshold,
                prepared_statements=settings.db_prepared_statements,
            )
    except psycopg.OperationalError as error:
        raise database_failure(error, url) from None
    if settings.database_direct_url is not None:
        await check_direct_url(settings.database_direct_url.get_secret_value(), settings, served)
    messages = [finding.message for finding in findings]
    if "not migrated" in causes:
        raise CommandFailed(
            f"Refusing to serve: the database is not migrated ({'; '.join(messages)}). "
            "Run `todo-api migrate` against it (or serve with --migrate), then start again."
        )
    if mismatch is not None:
        raise CommandFailed(f"Refusing to serve: {mismatch}, then start again.")
    if findings:
        listed = "\n".join(f"  - {message}" for message in messages)
        fix = (
            f"{GRANTS_MISSING}, then start again."
            if "grant missing" in causes
            else "Run `todo-api migrate`, or fix the roles and policies by hand, then start again."
        )
        raise CommandFailed(
            f"Refusing to serve: the database cannot guarantee that users are isolated:\n{listed}\n{fix}"
        )


async def refuse_what_migrating_left(url: str, connect_timeout_seconds: int, setting: str) -> None:
    """After `todo-api migrate`: refuse a database whose reach still differs from what todo-api ships.
    Migrating mends policies and row-level security; a grant revoked or lost, a grant added, a function
    replaced are left as they are, and `serve` refuses them. Migrating passed over them, saying
    nothing, and serve's advice to migrate went round in a loop.

    Read as the check reads what todo_app reaches (sql/checks/reach.sql), which any role may: the
    catalogs alone, with nothing the migrating role would see differently."""
    conninfo = libpq_url(url, connect_timeout=connect_timeout_seconds)
    try:
        async with (
            await LookupBoundedAsyncConnection.connect(conninfo) as connection,
            connection.transaction(force_rollback=True),
        ):
            live = await read_reach(connection)
    except psycopg.Error as error:  # a check that could not run vouches for nothing
        raise database_failure(error, url, setting) from None
    left = differences(live, expected_reach())
    if left:
        listed = "\n".join(f"  - {difference.message}" for difference in left)
        fix = GRANTS_MISSING if any(difference.grant_back for difference in left) else CHANGED_BY_HAND
        raise CommandFailed(
            f"the database is migrated, but cannot be served:\n{listed}\n{fix}, then migrate again."
        )
