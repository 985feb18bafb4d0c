"""Interoperability with the real thing: tokens from the `better-auth` npm package, against our API.

Copies tests/interop/better_auth (package.json, the committed lock file, server.mjs) to .cache/ and
runs `npm ci` there the first time (node_modules is large and full of other projects' code, so it
stays out of tests/ and out of git), then starts Better Auth with email and password, the jwt()
plugin and its in-memory adapter on loopback, signs a user up and in, and takes a token from
/api/auth/token.
"""

import fcntl
import json
import secrets
import selectors
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from api.app import create_app
from api.settings import Settings
from tests.auth.conftest import keys_fetched, wait_for
from tests.support import PROJECT, serving_client

SOURCE = Path(__file__).resolve().parent / "better_auth"
PACKAGE = PROJECT / ".cache" / "better-auth"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="Node.js and npm are needed to run a real Better Auth server"
)


@pytest.fixture(scope="session")
def better_auth_installed() -> Path:
    """`npm ci` once; later runs reuse node_modules. The lock keeps concurrent runs from racing."""
    assert NPM is not None
    PACKAGE.mkdir(parents=True, exist_ok=True)
    with (PACKAGE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock_file = "package-lock.json"
        if (PACKAGE / lock_file).exists() and (PACKAGE / lock_file).read_bytes() != (
            SOURCE / lock_file
        ).read_bytes():
            shutil.rmtree(PACKAGE / "node_modules", ignore_errors=True)
        for name in ("package.json", lock_file, "server.mjs"):
            shutil.copyfile(SOURCE / name, PACKAGE / name)
        if not (PACKAGE / "node_modules" / "better-auth" / "package.json").exists():
            subprocess.run(
                [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=PACKAGE,
                check=True,
                timeout=600,
            )
    return PACKAGE


@contextmanager
def better_auth(package: Path, algorithm: str | None = None) -> Iterator[str]:
    """A Better Auth server of its own (its own keys and users); yields its base URL."""
    assert NODE is not None
    command = [NODE, "server.mjs", *([algorithm] if algorithm else [])]
    process = subprocess.Popen(command, cwd=package, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=60):
                raise RuntimeError("Better Auth did not start within 60 seconds")
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"Better Auth exited with {process.wait()}")
        base_url: str = json.loads(line)["baseURL"]
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sign_up_and_get_token(base_url: str, email: str, name: str) -> tuple[str, str]:
    """What a frontend does: sign up, sign in, then GET /api/auth/token with the session cookie."""
    password = "correct horse battery staple"
    with httpx.Client(base_url=base_url, timeout=30) as browser:
        signed_up = browser.post(
            "/api/auth/sign-up/email", json={"email": email, "password": password, "name": name}
        )
        assert signed_up.status_code == 200, signed_up.text
        browser.cookies.clear()
        signed_in = browser.post("/api/auth/sign-in/email", json={"email": email, "password": password})
        assert signed_in.status_code == 200, signed_in.text
        response = browser.get("/api/auth/token")
        assert response.status_code == 200, response.text
        user_id: str = signed_in.json()["user"]["id"]
        token: str = response.json()["token"]
        return user_id, token


@pytest.fixture(scope="module")
def stranger(better_auth_installed: Path) -> Iterator[str]:
    """Another Better Auth deployment: its tokens are well-formed, but signed with keys we do not trust."""
    with better_auth(better_auth_installed) as base_url:
        yield base_url


@pytest.mark.parametrize("algorithm", [None, "ES256", "RS256"], ids=["default EdDSA", "ES256", "RS256"])
def test_real_better_auth_tokens_work_and_another_instances_do_not(
    better_auth_installed: Path,
    stranger: str,
    api_db_url: str,
    api_db: psycopg.Connection[Any],
    algorithm: str | None,
) -> None:
    with better_auth(better_auth_installed, algorithm) as auth_url:
        user_id, token = sign_up_and_get_token(auth_url, "erin@example.com", "Erin")
        header = jwt.get_unverified_header(token)
        assert header["alg"] == (algorithm or "EdDSA")
        assert "typ" not in header
        assert header["kid"]

        settings = Settings(_env_file=None, database_url=api_db_url, better_auth_url=auth_url)
        app = create_app(settings)
        with serving_client(app) as api:
            wait_for(lambda: keys_fetched(app))  # until then, a JWKS token is a 503
            headers = {"Authorization": f"Bearer {token}"}
            created = api.post(f"/api/{user_id}/tasks", json={"title": "From Better Auth"}, headers=headers)
            assert created.status_code == 201, created.text
            assert created.json()["user_id"] == user_id
            listed = api.get(f"/api/{user_id}/tasks", headers=headers)
            assert listed.status_code == 200
            assert [task["title"] for task in listed.json()] == ["From Better Auth"]
            row = api_db.execute("select email, name from users where id = %s", [user_id]).fetchone()
            assert row == ("erin@example.com", "Erin")

            other_id, other_token = sign_up_and_get_token(
                stranger, f"mallory-{secrets.token_hex(4)}@example.com", "Mallory"
            )
            refused = api.get(f"/api/{other_id}/tasks", headers={"Authorization": f"Bearer {other_token}"})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
            assert refused.json()["type"] == "urn:todo-api:problem:unauthorized"
            assert "unknown kid" in refused.json()["detail"]
