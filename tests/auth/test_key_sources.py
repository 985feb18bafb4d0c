"""Where keys come from: BETTER_AUTH_URL, BETTER_AUTH_JWKS_URL, the iss/aud overrides, and refusals."""

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from api.app import create_app
from api.auth.jwks import JwksKeySet
from api.settings import Settings
from tests.auth.conftest import claims_for, keys_fetched, user_with
from tests.auth.jwks_server import JwksServer, SigningKey, jwks_server
from tests.support import SECRET, better_auth_id, now, serving_client, settings_for, sign, wait_until

AUTH = "https://auth.example.com"
DATABASE = "postgresql://nobody@/nowhere"


def test_better_auth_url_gives_the_jwks_location_issuer_and_audience() -> None:
    settings = Settings(_env_file=None, database_url=DATABASE, better_auth_url=AUTH + "/")
    assert settings.jwks_url == f"{AUTH}/api/auth/jwks"
    assert settings.expected_issuer == settings.expected_audience == AUTH
    assert settings.better_auth_secret is None, "a JWKS alone is enough to serve"


@pytest.mark.parametrize(
    ("url", "jwks_url", "origin"),
    [
        # Better Auth serves its routes under its base URL's path when it has one, instead of /api/auth.
        (AUTH + "/auth", AUTH + "/auth/jwks", AUTH),
        (AUTH + "/api/auth/", AUTH + "/api/auth/jwks", AUTH),
        # `new URL(baseURL).origin`: the host in lower case, without the scheme's default port.
        ("https://Auth.Example.COM:443", "https://Auth.Example.COM:443/api/auth/jwks", AUTH),
        ("http://localhost:3000/auth", "http://localhost:3000/auth/jwks", "http://localhost:3000"),
        ("http://[::1]:3000/", "http://[::1]:3000/api/auth/jwks", "http://[::1]:3000"),
        # A host in Unicode is written as the URL standard writes it, in punycode.
        ("https://bücher.example/auth", "https://bücher.example/auth/jwks", "https://xn--bcher-kva.example"),
    ],
)
def test_iss_and_aud_are_the_origin_of_better_auth_url_as_better_auth_issues_them(
    url: str, jwks_url: str, origin: str
) -> None:
    settings = Settings(_env_file=None, database_url=DATABASE, better_auth_url=url)
    assert settings.jwks_url == jwks_url
    assert settings.expected_issuer == settings.expected_audience == origin


@pytest.mark.parametrize(
    "url",
    [
        AUTH + "?tenant=1",
        AUTH + "?",
        AUTH + "/auth#keys",
        "https://admin:hunter2@auth.example.com",
        # The URL standard reads a backslash as a slash; Python's parser does not.
        AUTH + "\\auth",
    ],
)
def test_a_query_fragment_or_user_in_better_auth_url_is_refused(url: str) -> None:
    # Appending /api/auth/jwks to these fetched the keys from a URL nobody meant, or sent a password.
    with pytest.raises(ValidationError, match="BETTER_AUTH_URL must be Better Auth's base URL"):
        Settings(_env_file=None, database_url=DATABASE, better_auth_url=url)


def test_a_better_auth_mounted_on_a_path_is_trusted_for_the_tokens_it_issues(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """BETTER_AUTH_URL=http://localhost:8734/auth, as Better Auth reads it: keys at /auth/jwks, and
    tokens whose iss and aud are the origin alone (tests/interop does the same with the real thing)."""
    key = SigningKey.generate()
    with jwks_server(key, jwks_path="/auth/jwks") as server:
        app = create_app(settings_for(api_db_url, better_auth_url=server.base_url + "/auth"))
        with serving_client(app) as client:
            wait_until(lambda: keys_fetched(app), "the API fetched the keys", 30)
            user_id = better_auth_id()
            user = user_with(key.sign(claims_for(server.base_url, user_id)), user_id)

            created = client.post(user.tasks_url, json={"title": "Mounted on /auth"}, headers=user.headers)

    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == user_id
    rows = api_db.execute("select title from tasks where user_id = %s", [user_id]).fetchall()
    assert rows == [("Mounted on /auth",)]


def test_the_environment_can_override_each_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DATABASE)
    monkeypatch.setenv("BETTER_AUTH_URL", AUTH)
    monkeypatch.setenv("BETTER_AUTH_JWKS_URL", "https://keys.example.com/.well-known/jwks.json")
    monkeypatch.setenv("JWT_ISSUER", "https://issuer.example.com")
    monkeypatch.setenv("JWT_AUDIENCE", "todo-api")
    monkeypatch.setenv("JWKS_REFETCH_COOLDOWN_SECONDS", "5")
    settings = Settings(_env_file=None)
    assert settings.jwks_url == "https://keys.example.com/.well-known/jwks.json"
    assert settings.expected_issuer == "https://issuer.example.com"
    assert settings.expected_audience == "todo-api"
    assert settings.jwks_refetch_cooldown_seconds == 5


def test_a_jwks_url_alone_is_enough() -> None:
    settings = Settings(_env_file=None, database_url=DATABASE, better_auth_jwks_url=AUTH + "/jwks")
    assert settings.jwks_url == AUTH + "/jwks"
    assert settings.expected_issuer is None


def test_no_key_source_at_all_refuses_to_start() -> None:
    settings = Settings(_env_file=None, database_url=DATABASE)
    with pytest.raises(ValueError, match="no token can be verified"):
        create_app(settings)


@pytest.mark.parametrize(
    "url", ["http://auth.example.com", "http://10.0.0.5:3000", "ftp://auth.example.com", "auth.example.com"]
)
def test_keys_are_fetched_over_https_only(url: str) -> None:
    with pytest.raises(ValidationError, match="https://"):
        Settings(_env_file=None, database_url=DATABASE, better_auth_url=url)
    with pytest.raises(ValidationError, match="https://"):
        Settings(_env_file=None, database_url=DATABASE, better_auth_jwks_url=url)


@pytest.mark.parametrize("url", ["http://localhost:3000", "http://127.0.0.1:3000", "http://[::1]:3000"])
def test_plain_http_is_fine_on_this_machine(url: str) -> None:
    assert Settings(_env_file=None, database_url=DATABASE, better_auth_url=url).better_auth_url == url


@pytest.fixture(scope="module")
def only_jwks(api_db_url: str) -> Iterator[tuple[JwksServer, SigningKey, httpx.Client]]:
    """No shared secret, a JWKS URL of its own, and an audience that is not Better Auth's URL."""
    key = SigningKey.generate("ES256")
    with jwks_server(key) as server:
        settings = Settings(
            _env_file=None,
            database_url=api_db_url,
            better_auth_jwks_url=server.jwks_url,
            jwt_issuer=server.base_url,
            jwt_audience="todo-api",
        )
        app = create_app(settings)
        with serving_client(app) as client:
            wait_until(lambda: keys_fetched(app), "the API fetched the keys", 30)
            yield server, key, client


def test_overridden_audience_is_the_one_checked(
    only_jwks: tuple[JwksServer, SigningKey, httpx.Client],
) -> None:
    server, key, client = only_jwks
    user_id = better_auth_id()
    ours = user_with(key.sign(claims_for(server.base_url, user_id, aud="todo-api")), user_id)
    theirs = user_with(key.sign(claims_for(server.base_url, user_id)), user_id)

    assert client.get(ours.tasks_url, headers=ours.headers).status_code == 200
    refused = client.get(theirs.tasks_url, headers=theirs.headers)
    assert refused.status_code == 401
    assert "audience" in refused.json()["detail"]


def test_without_a_secret_hs256_tokens_are_refused(
    only_jwks: tuple[JwksServer, SigningKey, httpx.Client],
) -> None:
    server, _, client = only_jwks
    user_id = better_auth_id()
    token = sign(
        {"sub": user_id, "exp": now() + 60, "iss": server.base_url, "aud": "todo-api"}, secret=SECRET
    )
    user = user_with(token, user_id)

    response = client.get(user.tasks_url, headers=user.headers)

    assert response.status_code == 401
    assert response.json()["detail"] == "The token is signed with an algorithm this API does not accept."


def test_a_password_in_the_jwks_url_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """BETTER_AUTH_JWKS_URL may carry a user and password (https://user:password@host), or a key in
    its query, for a key set behind authentication; logs show the rest. BETTER_AUTH_URL may not: it is
    also the tokens' issuer, which has none."""

    async def fetch_then_fail(url: str, server: JwksServer) -> None:
        async with JwksKeySet(url, refetch_cooldown=0, refresh_interval=3600) as key_set:
            assert await key_set.refresh()
            server.down = True
            assert not await key_set.refresh()

    async def fail_to_fetch(url: str) -> None:
        async with JwksKeySet(url, refetch_cooldown=0, refresh_interval=3600) as key_set:
            assert not await key_set.refresh()

    with jwks_server(SigningKey.generate()) as server, caplog.at_level(logging.INFO, "api.auth.jwks"):
        with_userinfo = server.jwks_url.replace("http://", "http://keys-user:Jwks7password@", 1)
        asyncio.run(fetch_then_fail(with_userinfo, server))
        asyncio.run(fail_to_fetch(with_userinfo + "?key=Jwks7query"))  # the server is down by now
    logged = [record.getMessage() for record in caplog.records]
    # The key set's own lines: a server of the previous test may still write its access line here.
    about_keys = [record.getMessage() for record in caplog.records if record.name == "api.auth.jwks"]
    assert any(message.startswith("JWKS: 1 key(s) from ") for message in about_keys), logged
    assert any(message.startswith("JWKS: cannot fetch ") for message in about_keys), logged
    assert all(server.jwks_url in message for message in about_keys), logged
    secrets = ("Jwks7password", "keys-user", "Jwks7query")
    assert not any(secret in message for message in logged for secret in secrets), logged
