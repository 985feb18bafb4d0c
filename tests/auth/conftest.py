"""Fixtures for Better Auth-style tokens: keys, a live JWKS endpoint, and an API that trusts it."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.http.services import services
from tests.auth.jwks_server import JwksServer, SigningKey, jwks_server
from tests.support import ApiUser, better_auth_id, now, serving_client, settings_for, wait_until

ALGORITHMS = ["EdDSA", "ES256", "ES512", "RS256", "PS256"]


@pytest.fixture(scope="session")
def signing_keys() -> dict[str, SigningKey]:
    """One published key per algorithm Better Auth can sign with; EdDSA is its default."""
    return {algorithm: SigningKey.generate(algorithm) for algorithm in ALGORITHMS}


@pytest.fixture(scope="session")
def ed_key(signing_keys: dict[str, SigningKey]) -> SigningKey:
    return signing_keys["EdDSA"]


@pytest.fixture(scope="module")
def published(signing_keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    with jwks_server(*signing_keys.values()) as server:
        yield server


@pytest.fixture(scope="module")
def jwks_api(api_db_url: str, published: JwksServer) -> Iterator[httpx.Client]:
    """An API with both key sources, as a deployment may have: Better Auth's JWKS and the shared secret."""
    settings = settings_for(api_db_url, better_auth_url=published.base_url)
    app = create_app(settings)
    with serving_client(app) as client:
        wait_until(lambda: keys_fetched(app), "the API fetched the keys at start-up", 30)
        yield client


def claims_for(issuer: str, user_id: str, **overrides: Any) -> dict[str, Any]:
    """A payload like Better Auth's: the user record, sub, iat, exp 15 minutes on, iss and aud its origin."""
    claims = {
        "id": user_id,
        "name": "Dana",
        "email": "dana@example.com",
        "emailVerified": False,
        "image": None,
        "createdAt": "2025-01-01T00:00:00.000Z",
        "updatedAt": "2025-01-01T00:00:00.000Z",
        "iat": now(),
        "exp": now() + 900,
        "iss": issuer,
        "aud": issuer,
        "sub": user_id,
        **overrides,
    }
    return {name: value for name, value in claims.items() if value is not ...}


def user_with(token: str, user_id: str) -> ApiUser:
    return ApiUser(user_id, token)


@pytest.fixture
def user_id() -> str:
    return better_auth_id()


@contextmanager
def api_trusting(api_db_url: str, server: JwksServer, **overrides: Any) -> Iterator[httpx.Client]:
    """An API of its own, trusting `server`'s keys (and the shared secret), with settings to taste;
    unless the server is down or dripping, once the API has fetched them."""
    settings = settings_for(api_db_url, better_auth_url=server.base_url, **overrides)
    app = create_app(settings)
    with serving_client(app) as client:
        if not server.down and not server.drip_seconds:
            wait_until(lambda: keys_fetched(app), "the API fetched the keys at start-up", 30)
        yield client


def get_tasks(client: httpx.Client, server: JwksServer, key: SigningKey, **claims: Any) -> httpx.Response:
    """A fresh user's task list, with a new token signed by `key` (so no remembered token hides it)."""
    user_id = better_auth_id()
    user = user_with(key.sign(claims_for(server.base_url, user_id, **claims)), user_id)
    return client.get(user.tasks_url, headers=user.headers)


def keys_fetched(app: FastAPI) -> bool:
    """Whether the app's start-up fetch of the keys is done: until then a JWKS token is a 503."""
    return all(key_set.fetched for key_set in services(app).authenticator.key_sets)
