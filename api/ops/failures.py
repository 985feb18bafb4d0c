"""What a command says when it cannot do its job: one message naming the cause and the fix.

Every failure a user can cause (a database out of reach, a refused login or connection option, a
missing database, a database not migrated or not isolating users, a URL of another kind, a missing
or short secret) becomes a CommandFailed, which the CLI prints without a traceback and exits 1 on
(`policies` 2, its 1 being findings: AUDIT_NOT_RUN in api/ops/cli.py).
"""

import os
import re
from fractions import Fraction

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from api.db.host_lookup import HostLookupTimeout
from api.db.urls import DatabaseUrlError, libpq_url
from api.settings import Settings


class CommandFailed(Exception):  # noqa: N818 (what the user sees, not a bug)
    """A failure the user can fix; `str()` is the whole message."""


def _where(database_url: str, setting: str) -> tuple[str, str | None]:
    """(host:port or the socket folder, database name, None when the URL names none); never the user
    or password."""
    try:
        parameters = conninfo_to_dict(libpq_url(database_url, setting))
    except (DatabaseUrlError, ValueError):
        return setting, "the database"
    hosts = str(parameters.get("host") or "localhost").split(",")
    ports = str(parameters.get("port") or "").split(",")
    # libpq's several hosts, tried in turn: one port for each, or one for all.
    ports = ports if len(ports) == len(hosts) else ports[:1] * len(hosts)
    where = ", ".join(
        f"the socket in {host}" if host.startswith("/") else f"{host or 'localhost'}:{port or '5432'}"
        for host, port in zip(hosts, ports, strict=True)
    )
    return where, str(parameters.get("dbname") or "") or None


def _has_options(database_url: str, setting: str) -> bool:
    try:
        return "options" in conninfo_to_dict(libpq_url(database_url, setting))
    except (DatabaseUrlError, ValueError):
        return False


def _acts_as_a_role(database_url: str, setting: str) -> bool:
    """Whether the URL's options set the role its sessions act as."""
    try:
        options = conninfo_to_dict(libpq_url(database_url, setting)).get("options")
    except (DatabaseUrlError, ValueError):
        return False
    return "role=" in str(options or "")


def _said_by_postgres(text: str) -> str | None:
    """Postgres's own reason for refusing the connection (libpq's line ending `FATAL:  reason`)."""
    for line in text.splitlines():
        _, fatal, reason = line.partition("FATAL:")
        if fatal:
            return reason.strip()
    return None


def _missing_database(said: str, name: str | None, where: str, setting: str) -> CommandFailed:
    """The missing database by the name Postgres was asked for: a URL that names none leaves it to
    libpq (PGDATABASE, or else the user's name), and "database the database" helped nobody."""
    asked = re.fullmatch(r'database "(.*)" does not exist', said)
    missing = asked.group(1) if asked else name or "the database"
    if name is not None:
        return CommandFailed(
            f"database {missing} does not exist at {where}: create it, or fix the name in {setting}"
        )
    default = "PGDATABASE" if os.environ.get("PGDATABASE") else "the user's name"
    return CommandFailed(
        f"database {missing} does not exist at {where} ({setting} names no database, so libpq asked for "
        f"{default}): name one at the end of its path (postgresql://user@host/NAME), or create {missing}"
    )


def database_failure(error: Exception, database_url: str, setting: str = "DATABASE_URL") -> CommandFailed:
    """The cause and the fix for a failure to connect to, or talk to, the database at `database_url`,
    which came from the variable `setting`: the one to fix."""
    if isinstance(error, DatabaseUrlError):
        return CommandFailed(str(error))
    text = str(error)
    lowered = text.lower()
    where, name = _where(database_url, setting)
    # libpq's "fe_sendauth: no password supplied": the server asked for a password the URL lacks.
    if (
        "password authentication failed" in lowered
        or "authentication failed" in lowered
        or "no password supplied" in lowered
    ):
        return CommandFailed(
            f"the database at {where} refused the login: check the user and password in {setting}"
        )
    # Postgres's own reason, not libpq's whole text: that names the host or socket folder first, and
    # a folder such as /tmp/todo-api-test-5qkrrole must not make a missing database a missing role.
    said = _said_by_postgres(text) or ""
    reason = (said or text).lower()
    if "role" in reason and "does not exist" in reason:
        if said.startswith("role ") and _acts_as_a_role(database_url, setting):
            # `-c role=OWNER` in the URL's options (README: how a superuser migrates as the owner):
            # the user logged in, the role named there is the one missing.
            return CommandFailed(
                f"the database at {where} has no {said.removesuffix(' does not exist')} to act as, "
                f"which the options of {setting} name (-c role=...): check the name there"
            )
        return CommandFailed(f"the database at {where} has no such login role: check the user in {setting}")
    if "no pg_hba.conf entry" in lowered:
        return CommandFailed(
            f"the database at {where} does not let this user in from here (pg_hba.conf): "
            f"check {setting}, or ask its administrator"
        )
    if "database" in reason and "does not exist" in reason:
        return _missing_database(said, name, where, setting)
    if "connection refused" in lowered or "no such file or directory" in lowered:
        return CommandFailed(
            f"cannot reach the database at {where} (connection refused): is Postgres running, "
            f"and are {setting}'s host and port right?"
        )
    if isinstance(error, HostLookupTimeout):
        return CommandFailed(
            f"the name server did not answer for the database host in {setting} ({where}) in time: "
            "check the network's name resolution (/etc/resolv.conf), or raise DB_CONNECT_TIMEOUT_SECONDS"
        )
    if "resolve host" in lowered or "translate host name" in lowered:
        return CommandFailed(f"cannot find the database host in {setting} ({where}): check its spelling")
    # PgBouncer's words when it ends a session at its first transaction block: every request is one.
    if "statement pooling mode" in lowered:
        return CommandFailed(
            f"{setting} reaches a pooler in statement mode at {where}, which allows no transaction of "
            "more than one statement, and every request is one: run it in transaction mode "
            "(PgBouncer: pool_mode = transaction)"
        )
    # PgBouncer's refusal of a startup parameter it does not pass on, as `options`: the URL's own, or
    # PGOPTIONS, or migrate's (its lock_timeout). Either way the URL reaches a pooler.
    if said and "unsupported startup parameter" in lowered:
        given = []
        if _has_options(database_url, setting):
            given.append(f"{setting}'s options")
        if os.environ.get("PGOPTIONS"):
            given.append("PGOPTIONS")
        direct = "a URL that reaches Postgres itself (Neon's direct URL, as MIGRATION_DATABASE_URL)"
        fix = (
            f"remove {' and '.join(given)}, which the pooler does not pass on; to migrate, use {direct}"
            if given
            else f"migrate through {direct}: migrate sets its lock_timeout with options, which the pooler "
            "does not pass on"
        )
        return CommandFailed(
            f"{setting} reaches a pooler at {where}, which refused the connection ({said}): {fix}"
        )
    if 'parameter "' in said:
        # An options=-c ... of the URL: statement_timeout=abc, a misspelt name, one not settable there.
        return CommandFailed(
            f"the database at {where} refused an option in {setting} ({said}): fix or remove it"
        )
    # psycopg's own wait for the server (connect_timeout); not any message that says "timeout".
    if isinstance(error, psycopg.errors.ConnectionTimeout) or "timed out" in lowered:
        return CommandFailed(
            f"the database at {where} did not answer in time: check {setting}'s host and port, "
            "the network, or raise DB_CONNECT_TIMEOUT_SECONDS"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return CommandFailed(f"cannot use the database at {where}: {first_line}")


def _written(limit: float) -> str:
    """A bound as README's settings table writes it: 2,147,483,647; 300; 1/3600 (a second in hours)."""
    if float(limit).is_integer():
        return f"{int(limit):,}"
    return str(Fraction(limit).limit_denominator(1_000_000))


_NUMBERS = {int: "a whole number", float: "a number"}


def _takes(field: FieldInfo) -> str | None:
    """Every value a number or a switch setting takes, in words; None for any other setting, whose
    reason (pydantic's list of a choice's values, or a validator's own words) says it already."""
    if field.annotation in (bool, bool | None):
        return "true or false"
    words = next((words for kind, words in _NUMBERS.items() if field.annotation in (kind, kind | None)), None)
    if words is None:
        return None
    bounds = {
        name: _written(getattr(limit, name))
        for limit in field.metadata
        for name in ("ge", "gt", "le")
        if getattr(limit, name, None) is not None
    }
    if "ge" in bounds and "le" in bounds:
        return f"{words} from {bounds['ge']} to {bounds['le']}"
    limits = [f"more than {bounds['gt']}"] if "gt" in bounds else []
    limits += [f"at least {bounds['ge']}"] if "ge" in bounds else []
    limits += [f"at most {bounds['le']}"] if "le" in bounds else []
    return f"{words} {', '.join(limits)}".rstrip()


def configuration_failure(error: ValidationError) -> CommandFailed:
    """Each invalid setting by its environment variable: for a number, a switch or a choice, the value
    as read and every value it takes (pydantic's words named neither: `Input should be a valid integer`,
    `greater than or equal to 0.0002777777777777778`), else pydantic's reason. The value is shown
    escaped (ascii): a full-width digit or a stray control character is then visible, not a 1."""
    reasons = []
    for detail in error.errors():
        variable = "_".join(str(part) for part in detail["loc"]).upper()
        field = Settings.model_fields.get(str(detail["loc"][0])) if detail["loc"] else None
        takes = _takes(field) if field is not None else None
        if detail["type"] == "literal_error":  # a choice: pydantic lists its values
            takes = str(detail.get("ctx", {}).get("expected"))
        if takes is not None:
            reasons.append(f"{variable} is {detail['input']!a}: it must be {takes}")
            continue
        message = str(detail["msg"]).removeprefix("Value error, ")
        reasons.append(message if variable and variable in message else f"{variable}: {message}")
    return CommandFailed("invalid configuration: " + "; ".join(reasons))
