"""Behaviour that depends on configuration: BETTER_AUTH_URL's iss/aud checks, and CORS."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.settings import Settings
from tests.support import SECRET, free_port, new_user, now, serving_client, settings_for, sign

# On loopback, where nothing listens: the app fetches Better Auth's keys from here in the background,
# and tests send traffic to this machine only.
AUTH_URL = f"http://127.0.0.1:{free_port()}"
FRONTEND = "http://localhost:3000"


@pytest.fixture(scope="module")
def configured(api_db_url: str) -> Iterator[httpx.Client]:
    settings = settings_for(api_db_url, better_auth_url=AUTH_URL + "/", cors_origins=FRONTEND)
    with serving_client(create_app(settings)) as client:
        yield client


def _claims(user_id: str, **overrides: Any) -> dict[str, Any]:
    claims = {"sub": user_id, "iat": now(), "exp": now() + 600, "iss": AUTH_URL, "aud": AUTH_URL, **overrides}
    return {name: value for name, value in claims.items() if value is not None}


@pytest.mark.parametrize(
    ("overrides", "status", "detail"),
    [
        ({}, 200, None),
        ({"aud": [AUTH_URL, "https://other.example.com"]}, 200, None),
        ({"iss": "https://evil.example.com"}, 401, "iss"),
        ({"iss": None}, 401, "'iss'"),
        ({"aud": "https://other.example.com"}, 401, "aud"),
        ({"aud": None}, 401, "'aud'"),
    ],
)
def test_issuer_and_audience_must_be_better_auth(
    configured: httpx.Client, overrides: dict[str, Any], status: int, detail: str | None
) -> None:
    user = new_user()
    token = sign(_claims(user.id, **overrides))
    response = configured.get(user.tasks_url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status
    if detail is not None:
        assert detail in response.json()["detail"]


def test_cors_preflight_allows_the_configured_origin(configured: httpx.Client) -> None:
    response = configured.options(
        "/api/u/tasks",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert "POST" in response.headers["access-control-allow-methods"]


def test_cors_refuses_other_origins(configured: httpx.Client) -> None:
    response = configured.options(
        "/api/u/tasks", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_no_cors_origins_by_default(client: httpx.Client) -> None:
    user = new_user()
    response = client.get(user.tasks_url, headers={**user.headers, "Origin": FRONTEND})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_a_test_apps_settings_are_what_it_is_given_whatever_the_environment_and_dotenv_say(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`settings_for` promises that neither a developer's .env nor their environment leaks into a test
    app; the environment did (pydantic-settings reads it first), and a DB_POOL_SIZE or an
    ISOLATION_CHECK_INTERVAL_SECONDS exported in the shell changed what every test ran against."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DB_POOL_SIZE=4\nLOG_LEVEL=ERROR\n")
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    monkeypatch.setenv("ISOLATION_CHECK_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("BETTER_AUTH_SECRET", "x" * 40)
    settings = settings_for("postgresql://nobody@/nowhere", db_statement_timeout_ms=1234)
    defaults = Settings.model_fields
    for name in ("db_pool_size", "isolation_check_interval_seconds", "log_level"):
        assert getattr(settings, name) == defaults[name].default, name
    assert settings.better_auth_secret is not None
    assert settings.better_auth_secret.get_secret_value() == SECRET
    assert settings.db_statement_timeout_ms == 1234
    assert Settings(_env_file=None).db_pool_size == 3, "the environment is read where a test asks for it"
