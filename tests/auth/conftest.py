"""Fixtures for Better Auth-style tokens: keys, a live JWKS endpoint, and an API that trusts it."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from tests.auth.jwks_server import JwksServer, SigningKey, jwks_server
from tests.support import ApiUser, better_auth_id, now, serving, settings_for

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
    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
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
