"""`todo-api serve` refuses to start (a clear message, exit status 1) when isolation is not certain."""

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.own_postgres import OwnPostgres
from tests.support import refusal


@pytest.mark.parametrize(
    ("spoil", "finding"),
    [
        ("drop owned by todo_app; drop role todo_app", "role todo_app does not exist"),
        ("alter role todo_app bypassrls", "todo_app has BYPASSRLS"),
        ("alter role todo_app superuser", "todo_app is a superuser"),
    ],
)
def test_refuses_when_todo_app_cannot_be_trusted(
    own_postgres: OwnPostgres, tmp_path: Path, spoil: str, finding: str
) -> None:
    with psycopg.connect(own_postgres.superuser_url, autocommit=True) as superuser:
        superuser.execute(spoil)
    assert finding in refusal(own_postgres.url, tmp_path)


OPEN_TABLES = {
    "alter table tasks no force row level security": "tasks is open to todo_app without row-level security forced",  # noqa: E501
    "alter table users disable row level security": "users is open to todo_app without row-level security enabled",  # noqa: E501
    "call app.drop_all_policies('public.tasks')": "tasks is open to todo_app without a policy",
    "create table notes (body text); grant select on notes to todo_app": "notes is open to todo_app without",
}


@pytest.mark.parametrize(("spoil", "finding"), OPEN_TABLES.items())
def test_refuses_when_a_table_is_open_to_todo_app(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str, tmp_path: Path, spoil: str, finding: str
) -> None:
    for statement in spoil.split(";"):
        migrated_db.execute(statement)
    migrated_db.commit()
    assert finding in refusal(migrated_db_url, tmp_path)


def test_refuses_a_login_role_that_cannot_switch_to_todo_app(
    migrated_db_url: str, superuser_url: str, tmp_path: Path
) -> None:
    stranger = "stranger_without_todo_app"
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(stranger)))
        superuser.execute(sql.SQL("create role {} login").format(sql.Identifier(stranger)))
    try:
        url = migrated_db_url.replace("postgresql://todo_owner@", f"postgresql://{stranger}@")
        assert f"login role {stranger} cannot switch to todo_app" in refusal(url, tmp_path)
    finally:
        with psycopg.connect(superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop role {}").format(sql.Identifier(stranger)))
