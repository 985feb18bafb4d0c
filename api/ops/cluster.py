"""Setting up a fresh Postgres cluster for the API: the login role and the database it owns.

One bootstrap for the embedded development database, the test fixtures and the benchmarks, so each
starts from what an operator has on Neon: an ordinary login role (like neondb_owner) owning the
database the migrations run in, never the superuser.
"""

from collections.abc import Iterable

import psycopg
from psycopg import sql

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
    with psycopg.connect(superuser_url, autocommit=True) as connection:
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


def ensure_api_login_role(owner_url: str, login_role: str, *, password: str | None = None) -> None:
    """The role the API should serve as: it logs in, owns nothing, bypasses nothing, and inherits
    nothing; it is a member of todo_app only, so that every request can switch to it.

    Run as the migrating owner, who holds todo_app with ADMIN (0001_app_role.sql) and needs
    CREATEROLE to create a role. A role that exists already is left as it is, but for its password
    (when one is given) and its membership of todo_app."""
    with psycopg.connect(owner_url, autocommit=True) as connection:
        role = sql.Identifier(login_role)
        exists = connection.execute("select from pg_roles where rolname = %s", [login_role]).fetchone()
        if exists is None:
            connection.execute(
                sql.SQL(
                    "create role {} login noinherit nobypassrls nosuperuser nocreatedb nocreaterole"
                ).format(role)
            )
        if password is not None:
            connection.execute(sql.SQL("alter role {} password {}").format(role, sql.Literal(password)))
        connection.execute(sql.SQL("grant todo_app to {}").format(role))
