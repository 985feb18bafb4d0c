"""Requests an attacker sends are refused cheaply, clearly, and without a trace in the database."""

from typing import Any

import httpx
import psycopg
import pytest

from tests.support import ApiUser, assert_problem, new_user, now, sign


def _user_rows(api_db: psycopg.Connection[Any], user_id: str) -> int:
    row = api_db.execute("select count(*) from users where id = %s", [user_id]).fetchone()
    assert row is not None
    return int(row[0])


def test_an_authorization_header_over_8_kib_is_refused_before_decoding(client: httpx.Client) -> None:
    alice = new_user()
    huge = "Bearer " + "a" * (8 * 1024)
    response = client.get(alice.tasks_url, headers={"Authorization": huge})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "8192 bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"email": "\ud800@example.com"}, id="lone-surrogate-email"),
        pytest.param({"name": "Al\udfffice"}, id="lone-surrogate-name"),
        pytest.param({"exp": "9999999999"}, id="exp-numeric-string"),
        pytest.param({"exp": 1e300}, id="exp-1e300"),
        pytest.param({"exp": True}, id="exp-boolean"),
        pytest.param({"iat": "1700000000"}, id="iat-string"),
        pytest.param({"nbf": "0"}, id="nbf-string"),
        pytest.param({"nbf": -1}, id="nbf-negative"),
    ],
)
def test_a_signed_token_with_unusable_claims_is_401_and_writes_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], claims: dict[str, Any]
) -> None:
    user = new_user()
    token = sign({"sub": user.id, "exp": now() + 600, **claims})
    response = client.post(user.tasks_url, json={"title": "t"}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert _user_rows(api_db, user.id) == 0


@pytest.mark.parametrize("exp", [True, False])
def test_a_boolean_exp_is_named_as_malformed_not_expired(
    client: httpx.Client, api_db: psycopg.Connection[Any], exp: bool
) -> None:
    user = new_user()
    token = sign({"sub": user.id, "exp": exp})
    response = client.post(user.tasks_url, json={"title": "t"}, headers={"Authorization": f"Bearer {token}"})
    detail = assert_problem(response, 401, "unauthorized")["detail"]
    assert "exp claim" in detail, detail
    assert "expired" not in detail, "a client told so fetches another token, as broken as this one"
    assert _user_rows(api_db, user.id) == 0


def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_names(
    client: httpx.Client, alice: ApiUser
) -> None:
    response = client.get(f"{alice.tasks_url}/", headers={**alice.headers, "Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.mark.parametrize("task_id", ["4_0", "+1", "1%20", "%201", "%D9%A1", "0x1", "1e3", "-1", "01", "007"])
def test_task_ids_are_ascii_digits_only(client: httpx.Client, alice: ApiUser, task_id: str) -> None:
    response = client.get(f"{alice.tasks_url}/{task_id}", headers=alice.headers)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["path.task_id"]
