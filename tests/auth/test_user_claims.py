"""The user row follows the token: a new email or name is stored on the next write, and only then."""

from typing import Any

import httpx
import psycopg

from tests.auth.conftest import claims_for, user_with
from tests.auth.jwks_server import JwksServer, SigningKey

_ROW = "select email, name, xmin::text from users where id = %s"


def _create(client: httpx.Client, key: SigningKey, server: JwksServer, user_id: str, **claims: Any) -> None:
    user = user_with(key.sign(claims_for(server.base_url, user_id, **claims)), user_id)
    response = client.post(user.tasks_url, json={"title": "A task"}, headers=user.headers)
    assert response.status_code == 201, response.text


def test_a_changed_email_or_name_updates_the_row_and_an_unchanged_one_writes_nothing(
    jwks_api: httpx.Client,
    published: JwksServer,
    ed_key: SigningKey,
    user_id: str,
    api_db: psycopg.Connection[Any],
) -> None:
    _create(jwks_api, ed_key, published, user_id, email="dana@example.com", name="Dana")
    email, name, first_version = api_db.execute(_ROW, [user_id]).fetchone() or (None, None, None)
    assert (email, name) == ("dana@example.com", "Dana")

    _create(jwks_api, ed_key, published, user_id, email="dana@example.com", name="Dana")
    assert api_db.execute(_ROW, [user_id]).fetchone() == (email, name, first_version), "no write"

    _create(jwks_api, ed_key, published, user_id, email="dana@new.example.com", name="Dana B.")
    email, name, second_version = api_db.execute(_ROW, [user_id]).fetchone() or (None, None, None)
    assert (email, name) == ("dana@new.example.com", "Dana B.")
    assert second_version != first_version

    _create(jwks_api, ed_key, published, user_id, email=..., name=...)
    assert api_db.execute(_ROW, [user_id]).fetchone() == (email, name, second_version), (
        "a token without profile claims keeps what is stored"
    )
