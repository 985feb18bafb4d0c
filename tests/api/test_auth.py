"""Who may call: every token the API must refuse (401), and every endpoint refusing another user (403)."""

import base64
import json
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import SECRET, ApiUser, assert_problem, now, sign

# Every endpoint, as (method, path under /api/{user_id}/tasks, JSON body).
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("POST", "", {"title": "Sneaky"}),
    ("GET", "/1", None),
    ("PUT", "/1", {"title": "Sneaky"}),
    ("DELETE", "/1", None),
    ("PATCH", "/1/complete", None),
]


def _unsigned(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _tampered(user_id: str) -> str:
    header, _, signature = sign({"sub": user_id, "exp": now() + 60}).split(".")
    payload = base64.urlsafe_b64encode(json.dumps({"sub": user_id, "exp": now() + 9999}).encode())
    return f"{header}.{payload.decode().rstrip('=')}.{signature}"


def bad_tokens(user_id: str) -> dict[str, str]:
    fresh = {"sub": user_id, "iat": now(), "exp": now() + 600}
    return {
        "expired": sign({**fresh, "exp": now() - 120}),
        "not yet valid (nbf)": sign({**fresh, "nbf": now() + 600}),
        "issued in the future (iat)": sign({**fresh, "iat": now() + 600}),
        "no exp": sign({"sub": user_id, "iat": now()}),
        "no sub": sign({"iat": now(), "exp": now() + 600}),
        "empty sub": sign({**fresh, "sub": ""}),
        "numeric sub": sign({**fresh, "sub": 42}),
        "wrong secret": sign(fresh, secret="another-secret-that-is-long-enough-0123456789"),
        "alg none": _unsigned(fresh),
        "HS512, whatever its key": sign(fresh, secret=SECRET * 2, algorithm="HS512"),
        "tampered payload": _tampered(user_id),
        "not a JWT": "definitely-not-a-token",
        "three empty parts": "..",
    }


@pytest.mark.parametrize("case", list(bad_tokens("x")))
def test_bad_tokens_are_401_with_a_challenge(client: httpx.Client, alice: ApiUser, case: str) -> None:
    token = bad_tokens(alice.id)[case]
    response = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})

    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert token not in response.text or not token, "the token is never echoed"


# `.` and `..` percent-encoded, as a client must send them to keep them (Starlette decodes them before
# routing); `a/b` reaches no route at all, even as a%2Fb (404), so it is sent to its first segment's.
@pytest.mark.parametrize(("sub", "segment"), [(".", "%2E"), ("..", "%2E%2E"), ("a/b", "a")])
def test_a_sub_no_path_segment_can_name_is_401_and_creates_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], sub: str, segment: str
) -> None:
    """It was verified, and `..`'s own path answered a create with `Location: /api/../tasks/1`, which
    every client resolves to /api/tasks/1: no task's URL. Refused when verified, it says why."""
    token = sign({"sub": sub, "exp": now() + 60})
    response = client.post(
        f"/api/{segment}/tasks", json={"title": "x"}, headers={"Authorization": f"Bearer {token}"}
    )
    body = assert_problem(response, 401, "unauthorized")
    assert "one URL path segment" in body["detail"]
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert api_db.execute("select count(*) from users where id = %s", [sub]).fetchone() == (0,)
    assert api_db.execute("select count(*) from tasks where user_id = %s", [sub]).fetchone() == (0,)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic YWxpY2U6c2VjcmV0", "Token abc"],
)
def test_missing_credentials_are_401_with_a_bare_challenge(
    client: httpx.Client, alice: ApiUser, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(alice.tasks_url, headers=headers)
    assert "Authorization: Bearer" in assert_problem(response, 401, "unauthorized")["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("second", ["bob", "alice"], ids=["another-users-token", "the-same-token"])
def test_two_authorization_headers_are_401_and_change_nothing(
    client: httpx.Client,
    alice: ApiUser,
    bob: ApiUser,
    api_db: psycopg.Connection[Any],
    second: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    """Two claims of who is calling prove nobody, even two valid ones, even the same one twice: a
    proxy in front could act on the other one."""
    other = {"alice": alice, "bob": bob}[second]
    headers = [("Authorization", f"Bearer {alice.token}"), ("Authorization", f"Bearer {other.token}")]
    response = client.request(method, alice.tasks_url + path, json=body, headers=headers)

    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "one Authorization header" in response.json()["detail"]
    for user in (alice, bob):
        assert api_db.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone() == (0,)


def test_token_in_the_query_string_is_not_accepted(client: httpx.Client, alice: ApiUser) -> None:
    response = client.get(alice.tasks_url, params={"access_token": alice.token, "token": alice.token})
    assert "Authorization: Bearer" in assert_problem(response, 401, "unauthorized")["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_expired_token_says_so(client: httpx.Client, alice: ApiUser) -> None:
    token = sign({"sub": alice.id, "exp": now() - 120})
    response = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert "expired" in assert_problem(response, 401, "unauthorized")["detail"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_read_in_any_case(client: httpx.Client, alice: ApiUser, scheme: str) -> None:
    """RFC 9110, section 11.1: an authentication scheme is case-insensitive; a client library that
    sends `bearer` must not be locked out (the mutation probe, /tmp/s77-mut, P12)."""
    created = client.post(
        alice.tasks_url, json={"title": scheme}, headers={"Authorization": f"{scheme} {alice.token}"}
    )
    assert created.status_code == 201, created.text
    listed = client.get(alice.tasks_url, headers={"Authorization": f"{scheme} {alice.token}"})
    assert listed.status_code == 200, listed.text
    assert [task["title"] for task in listed.json()] == [scheme]


def test_small_clock_skew_is_tolerated(client: httpx.Client, alice: ApiUser) -> None:
    token = sign({"sub": alice.id, "iat": now() + 5, "nbf": now() + 5, "exp": now() + 60})
    response = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json() == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_bad_token_writes_nothing(
    client: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], method: str, path: str, body: Any
) -> None:
    token = sign({"sub": alice.id, "exp": now() + 60}, secret="wrong-secret-but-long-enough-0123456789")
    response = client.request(
        method, alice.tasks_url + path, json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert "signature" in assert_problem(response, 401, "unauthorized")["detail"].lower()
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_another_users_path_is_403_on_every_endpoint(
    client: httpx.Client,
    alice: ApiUser,
    bob: ApiUser,
    api_db: psycopg.Connection[Any],
    method: str,
    path: str,
    body: Any,
) -> None:
    bobs_task = client.post(bob.tasks_url, json={"title": "Bob's"}, headers=bob.headers).json()
    path = path.replace("/1", f"/{bobs_task['id']}")

    response = client.request(method, bob.tasks_url + path, json=body, headers=alice.headers)

    assert_problem(response, 403, "forbidden")
    rows = api_db.execute("select title, completed from tasks where user_id = %s", [bob.id]).fetchall()
    assert rows == [("Bob's", False)], "bob's tasks are exactly as he left them"
    assert api_db.execute("select count(*) from users where id = %s", [alice.id]).fetchone() == (0,)


def test_hs256_secret_is_the_one_configured(client: httpx.Client, alice: ApiUser) -> None:
    token = sign({"sub": alice.id, "exp": now() + 60}, secret=SECRET)
    assert client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_token_signed_with_another_secret_names_the_setting_both_sides_must_share(
    client: httpx.Client, alice: ApiUser
) -> None:
    """A frontend signing HS256 with a secret of its own (the API in development uses the one it made)
    was told only that the signature does not verify, not which setting to compare."""
    token = sign({"sub": alice.id, "exp": now() + 60}, secret="the-frontends-own-secret-0123456789")
    response = client.get(alice.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthorized")
    assert "BETTER_AUTH_SECRET" in response.json()["detail"]
    assert SECRET not in response.text


@pytest.mark.parametrize(("method", "path"), [("POST", ""), ("PUT", "/1"), ("PATCH", "/1/complete")])
def test_the_caller_is_checked_before_the_body_is_read(
    client: httpx.Client, alice: ApiUser, bob: ApiUser, method: str, path: str
) -> None:
    malformed = b'{"title": '
    forged = sign({"sub": alice.id, "exp": now() + 60}, secret="wrong-secret-but-long-enough-0123456789")
    json_headers = {"Content-Type": "application/json"}

    nobody = client.request(method, alice.tasks_url + path, content=malformed, headers=json_headers)
    impostor = client.request(
        method,
        alice.tasks_url + path,
        content=malformed,
        headers={**json_headers, "Authorization": f"Bearer {forged}"},
    )
    elsewhere = client.request(
        method, bob.tasks_url + path, content=malformed, headers={**json_headers, **alice.headers}
    )

    assert [nobody.status_code, impostor.status_code, elsewhere.status_code] == [401, 401, 403]
