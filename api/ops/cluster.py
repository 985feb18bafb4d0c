"""Setting up a fresh Postgres cluster for the API: the login role and the database it owns.

One bootstrap for the embedded development database, the test fixtures and the benchmarks, so each
starts from what an operator has on Neon: an ordinary login role (like neondb_owner) owning the
database the migrations run in, never the superuser. And the role an operator serves as, which
`todo-api migrate --login-role` makes (`create_login_role`): it logs in, owns nothing and is a
member of todo_app.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from api.db.host_lookup import LookupBoundedConnection
from api.db.sql_files import UNFIT_LOGIN_ROLE_CHECK, read_sql
from api.db.urls import libpq_url
from api.ops.failures import CommandFailed, database_failure
from api.ops.migrations import migration_failure
from api.settings import Settings

# What a login role may be given here; each is a keyword of CREATE ROLE, so only these are spliced.
_ROLE_ATTRIBUTES = frozenset({"LOGIN", "CREATEROLE", "CREATEDB", "BYPASSRLS"})


def ensure_login_role_and_database(
    superuser_url: str,
    login_role: str,
    *,
    attributes: Iterable[str] = ("LOGIN", "CREATEROLE"),
    database: str | None = None,
    template: bool = False,
) -> None:
    """Create `login_role` with `attributes`, and `database` owned by it, unless they exist."""
    keywords = [attribute.upper() for attribute in attributes]
    if unknown := set(keywords) - _ROLE_ATTRIBUTES:
        raise ValueError(f"not a role attribute this bootstrap grants: {sorted(unknown)}")
    with LookupBoundedConnection.connect(superuser_url, autocommit=True) as connection:
        if connection.execute("select from pg_roles where rolname = %s", [login_role]).fetchone() is None:
            connection.execute(
                sql.SQL("create role {} {}").format(
                    sql.Identifier(login_role), sql.SQL(" ").join(map(sql.SQL, keywords))
                )
            )
        if database is None:
            return
        if connection.execute("select from pg_database where datname = %s", [database]).fetchone() is None:
            connection.execute(
                sql.SQL("create database {} owner {} is_template {}").format(
                    sql.Identifier(database), sql.Identifier(login_role), sql.Literal(template)
                )
            )


class UnfitLoginRole(Exception):  # noqa: N818 (what the operator sees, not a bug)
    """An existing role the API must not serve as; `str()` says why and what to do instead."""


# Names that are not an ordinary role to Postgres (or to pg_hba.conf): PUBLIC is every role, and a
# GRANT to it, quoted or not, is a grant to everyone; CURRENT_USER and its kin name whoever runs the
# statement; NONE is refused. Compared in any case: "PUBLIC" quoted is a role of its own, yet read
# unquoted by anyone typing it, it is everyone.
_RESERVED_ROLE_NAMES = frozenset(
    {"public", "none", "current_user", "session_user", "current_role", "system_user", "user", "all"}
)
# NAMEDATALEN - 1: Postgres cuts a longer name to this many bytes, so the role made is not the one named.
_ROLE_NAME_MAX_BYTES = 63


def unusable_login_role_name(name: str) -> str | None:
    """Why `name` can never be the API's login role, whatever the database holds; None if it can be."""
    if name.lower() in _RESERVED_ROLE_NAMES:
        return "it is a name SQL reserves (PUBLIC is every role, CURRENT_USER whoever runs the statement)"
    if name.lower().startswith("pg_"):
        return "it starts with pg_, which names Postgres's own roles (pg_monitor, pg_read_all_data, ...)"
    try:
        name.encode()
    except UnicodeEncodeError:  # a byte the locale could not decode, as a lone surrogate
        return "it is not UTF-8 text (check the terminal's encoding)"
    if name != name.strip() or not name.isprintable():
        # Postgres takes them (quoted), but DATABASE_URL must then percent-encode them, and a space
        # left by a copy or a quoting slip would make a role no connection string names as typed.
        return "it begins or ends with whitespace, or holds a control character"
    if len(name.encode()) > _ROLE_NAME_MAX_BYTES:
        return (
            f"it is {len(name.encode())} bytes long, and Postgres keeps only the first "
            f"{_ROLE_NAME_MAX_BYTES} of a role's name"
        )
    return None


@dataclass(frozen=True)
class ApiLoginRole:
    """What the role made or kept for serving is, read back from the catalog."""

    name: str
    existed: bool
    can_login: bool
    inherits: bool
    member_of: list[str]


def described(role: ApiLoginRole, *, password_set: bool) -> str:
    """What the role is, from the catalog: an existing one keeps attributes the recipe would not give,
    but not its password when it was given DATABASE_URL's."""
    kept = "every attribute but its password" if password_set else "its attributes"
    existed = f" (it existed, and keeps {kept})" if role.existed else ""
    attributes = f"{'' if role.can_login else 'NO'}LOGIN {'' if role.inherits else 'NO'}INHERIT NOBYPASSRLS"
    return (
        f"login role {role.name}{existed}: {attributes}, owns nothing, member of {', '.join(role.member_of)}"
    )


# DISTINCT: since PostgreSQL 16 one membership may be granted by several grantors, a row each.
_WHAT_IT_IS = """
select r.rolcanlogin, r.rolinherit,
       array(select distinct b.rolname::text from pg_catalog.pg_auth_members m
             join pg_catalog.pg_roles b on b.oid = m.roleid where m.member = r.oid order by 1)
from pg_catalog.pg_roles r where r.rolname = %s
"""


def _refuse_an_unfit_role(connection: psycopg.Connection[tuple[Any, ...]], login_role: str) -> None:
    # The check names its role by a setting (so psql can run it as it stands), scoped to one
    # transaction like every setting this project makes.
    with connection.transaction():
        connection.execute("select pg_catalog.set_config('todo_api.login_role', %s, true)", [login_role])
        row = connection.execute(read_sql(UNFIT_LOGIN_ROLE_CHECK)).fetchone()
    reasons = list(row[0]) if row is not None else []
    if not reasons:
        return
    raise UnfitLoginRole(
        f"refusing --login-role {login_role}: it {'; and it '.join(reasons)}. Name a new role instead (say "
        "--login-role todo_login), which is created LOGIN NOINHERIT NOBYPASSRLS, owning nothing; "
        f"nothing about {login_role} was changed"
    )


def _may_not_alter(
    connection: psycopg.Connection[tuple[Any, ...]], login_role: str, error: psycopg.Error
) -> UnfitLoginRole:
    # Since Postgres 16 CREATEROLE reaches only the roles this role made or holds with ADMIN: it is
    # the owner already, so migrating as the owner, the fix for its other refusals, would not help.
    (owner,) = connection.execute("select current_user").fetchone() or ("the migrating role",)
    return UnfitLoginRole(
        f"refusing --login-role {login_role}: it exists, and {owner} may not alter it "
        f"({error.diag.message_primary or error}) to give it DATABASE_URL's password, since another "
        f"role created it. Name a role {owner} may create instead (say --login-role todo_login), or "
        f"have a superuser or {login_role}'s creator run `GRANT {sql.Identifier(login_role).as_string()} "
        f"TO {sql.Identifier(owner).as_string()} WITH ADMIN OPTION` first; nothing about {login_role} "
        "was changed"
    )


# Neon's control plane, which every role change goes through at its commit, takes no SCRAM verifier:
# "Received HTTP code 400 from control plane: ... Neon only supports being given plaintext passwords".
_VERIFIERS_REFUSED = "only supports being given plaintext passwords"


def _give_password(connection: psycopg.Connection[tuple[Any, ...]], login_role: str, password: str) -> None:
    """`ALTER ROLE ... PASSWORD`, hashed here as psql's \\password does (libpq's PQencryptPasswordConn,
    with the server's password_encryption): a password in the statement is in the server's log
    whenever the statement fails (the refusal for a role another role created did) or with
    log_statement = ddl, and in pg_stat_activity meanwhile. Where the server takes only the password
    itself (Neon, which keeps its own logs), it is sent as it is, over the same connection. Always a
    SCRAM verifier, whatever the server's password_encryption: an MD5 one (a DBA's md5, kept for old
    clients) could never log in where pg_hba.conf asks for scram-sha-256, Postgres's default (the
    database-settings probe of stop 81), and Postgres 18 deprecates MD5 passwords."""
    role = sql.Identifier(login_role)
    hashed = connection.pgconn.encrypt_password(
        password.encode(), login_role.encode(), algorithm=b"scram-sha-256"
    ).decode()
    try:
        connection.execute(sql.SQL("alter role {} password {}").format(role, sql.Literal(hashed)))
    except psycopg.Error as error:  # Neon documents neither its class nor its words; these were seen
        if _VERIFIERS_REFUSED not in str(error):
            raise
        connection.execute(sql.SQL("alter role {} password {}").format(role, sql.Literal(password)))


def ensure_api_login_role(owner_url: str, login_role: str, *, password: str | None = None) -> ApiLoginRole:
    """The role the API should serve as: it logs in, owns nothing, bypasses nothing, and inherits
    nothing; it is a member of todo_app, so that every request can switch to it.

    Run as the migrating owner, who holds todo_app with ADMIN (0001_app_role.sql) and needs
    CREATEROLE to create a role. A role that exists already keeps its attributes, and is given only
    the password (when one is given) and membership of todo_app; UnfitLoginRole, with nothing
    changed, when it is todo_app, a superuser, has BYPASSRLS or owns anything in the database.
    Returns what the role is afterwards, as the catalog says."""
    with LookupBoundedConnection.connect(owner_url, autocommit=True) as connection:
        role = sql.Identifier(login_role)
        exists = connection.execute("select from pg_roles where rolname = %s", [login_role]).fetchone()
        if exists is None:
            connection.execute(
                sql.SQL(
                    "create role {} login noinherit nobypassrls nosuperuser nocreatedb nocreaterole"
                ).format(role)
            )
        else:
            _refuse_an_unfit_role(connection, login_role)
        if password is not None:
            try:
                _give_password(connection, login_role, password)
            except psycopg.errors.InsufficientPrivilege as error:
                if exists is None:
                    raise
                raise _may_not_alter(connection, login_role, error) from None
        connection.execute(sql.SQL("grant todo_app to {}").format(role))
        row = connection.execute(_WHAT_IT_IS, [login_role]).fetchone()
    assert row is not None
    can_login, inherits, member_of = row
    return ApiLoginRole(login_role, exists is not None, bool(can_login), bool(inherits), list(member_of))


def create_login_role(owner_url: str, name: str, settings: Settings, setting: str) -> str:
    """The role to serve as (owns nothing, member of todo_app), with DATABASE_URL's password when
    DATABASE_URL names it; `owner_url` came from the variable `setting`."""
    password = None
    if settings.database_url is not None:
        served = conninfo_to_dict(libpq_url(settings.database_url.get_secret_value()))
        if served.get("user") == name and served.get("password"):
            password = str(served["password"])
    try:
        conninfo = libpq_url(owner_url, connect_timeout=settings.db_connect_timeout_seconds)
        role = ensure_api_login_role(conninfo, name, password=password)
    except UnfitLoginRole as error:
        raise CommandFailed(str(error)) from None
    except psycopg.OperationalError as error:
        raise database_failure(error, owner_url, setting) from None
    except psycopg.Error as error:
        raise CommandFailed(str(migration_failure(error, owner_url))) from None
    where = (
        "its password is now DATABASE_URL's"
        if password
        # Quoted as Postgres reads it: todo-login, say, was advised bare, a syntax error in psql.
        else f"give it a password (ALTER ROLE {sql.Identifier(name).as_string()} PASSWORD '...') unless it "
        "logs in another way, "
        f"and serve with DATABASE_URL naming {name}"
    )
    return f"{described(role, password_set=password is not None)}; {where}"
