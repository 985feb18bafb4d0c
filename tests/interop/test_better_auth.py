"""Interoperability with the real thing: tokens from the `better-auth` npm package, against our API.

Copies tests/interop/better_auth (package.json, the committed lock file, server.mjs) to .cache/ and
runs `npm ci` there the first time (node_modules is large and full of other projects' code, so it
stays out of tests/ and out of git), then starts Better Auth with email and password, the jwt()
plugin and its in-memory adapter on loopback, signs a user up and in, and takes a token from
/api/auth/token.
"""

import fcntl
import json
import logging
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
from tests.auth.conftest import keys_fetched
from tests.support import PROJECT, TLS, assert_problem, serving_client, wait_until

SOURCE = Path(__file__).resolve().parent / "better_auth"
PACKAGE = PROJECT / ".cache" / "better-auth"
NODE = shutil.which("node")
NPM = shutil.which("npm")
# Where Better Auth mounts its routes unless told otherwise (its basePath).
ROUTES = "/api/auth"

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
def better_auth(package: Path, **options: object) -> Iterator[str]:
    """A Better Auth server of its own (its own keys and users); yields its base URL. `options` are
    server.mjs's: alg, basePath, issuer, audience, and jwt=False for none of its plugin."""
    assert NODE is not None
    process = subprocess.Popen(
        [NODE, "server.mjs", json.dumps(options)], cwd=package, stdout=subprocess.PIPE, text=True
    )
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


PASSWORD = "correct horse battery staple"


@contextmanager
def signed_in(auth_url: str, email: str, name: str) -> Iterator[tuple[httpx.Client, str]]:
    """What a frontend does first: sign up, then sign in. Yields the browser, holding the session
    cookie, with requests relative to Better Auth's routes (`auth_url`: base URL and basePath), and
    the user's id."""
    url = httpx.URL(auth_url)
    # Sent by a browser with every POST; Better Auth refuses one with a session cookie without it.
    origin = {"Origin": f"{url.scheme}://{url.host}:{url.port}"}
    with httpx.Client(base_url=auth_url, timeout=30, headers=origin, verify=TLS) as browser:
        signed_up = browser.post("/sign-up/email", json={"email": email, "password": PASSWORD, "name": name})
        assert signed_up.status_code == 200, signed_up.text
        browser.cookies.clear()
        answer = browser.post("/sign-in/email", json={"email": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        yield browser, answer.json()["user"]["id"]


def token_of(browser: httpx.Client) -> str:
    """The JWT for the signed-in session, from the jwt() plugin's /token, as authClient.token() gets it."""
    response = browser.get("/token")
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def sign_up_and_get_token(auth_url: str, email: str, name: str) -> tuple[str, str]:
    with signed_in(auth_url, email, name) as (browser, user_id):
        return user_id, token_of(browser)


@pytest.fixture(scope="module")
def stranger(better_auth_installed: Path) -> Iterator[str]:
    """Another Better Auth deployment: its tokens are well-formed, but signed with keys we do not trust."""
    with better_auth(better_auth_installed) as base_url:
        yield base_url


@pytest.mark.parametrize(
    "algorithm",
    [None, "ES256", "ES512", "RS256", "PS256"],
    ids=["default EdDSA", "ES256", "ES512", "RS256", "PS256"],
)
def test_real_better_auth_tokens_work_and_another_instances_do_not(
    better_auth_installed: Path,
    stranger: str,
    api_db_url: str,
    api_db: psycopg.Connection[Any],
    algorithm: str | None,
) -> None:
    with better_auth(better_auth_installed, **({"alg": algorithm} if algorithm else {})) as auth_url:
        user_id, token = sign_up_and_get_token(auth_url + ROUTES, "erin@example.com", "Erin")
        header = jwt.get_unverified_header(token)
        assert header["alg"] == (algorithm or "EdDSA")
        assert "typ" not in header
        assert header["kid"]

        settings = Settings(_env_file=None, database_url=api_db_url, better_auth_url=auth_url)
        app = create_app(settings)
        with serving_client(app) as api:
            wait_until(
                lambda: keys_fetched(app), "the API fetched the keys", 30
            )  # until then, a JWKS token is a 503
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
                stranger + ROUTES, f"mallory-{secrets.token_hex(4)}@example.com", "Mallory"
            )
            refused = api.get(f"/api/{other_id}/tasks", headers={"Authorization": f"Bearer {other_token}"})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
            assert refused.json()["type"] == "urn:todo-api:problem:unauthorized"
            assert "unknown kid" in refused.json()["detail"]


@contextmanager
def api_for(database_url: str, *, keys_found: bool = True, **settings: Any) -> Iterator[httpx.Client]:
    """The API with these settings and nothing else; when `keys_found`, once it has fetched the keys."""
    app = create_app(Settings(_env_file=None, database_url=database_url, **settings))
    with serving_client(app) as api:
        if keys_found:
            wait_until(lambda: keys_fetched(app), "the API fetched the keys", 30)
        yield api


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def test_better_auth_with_its_own_issuer_and_audience_is_refused_until_jwt_issuer_and_audience_name_them(
    better_auth_installed: Path, api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """jwt({ jwt: { issuer, audience } }): the README's BETTER_AUTH_URL alone expects its origin in
    both. Every token is refused, and the log, which only the operator reads, names both values."""
    issuer, audience = "https://auth.example.com", "https://api.example.com"
    with better_auth(better_auth_installed, issuer=issuer, audience=audience) as auth_url:
        user_id, token = sign_up_and_get_token(auth_url + ROUTES, "iris@example.com", "Iris")
        headers = {"Authorization": f"Bearer {token}"}

        with (
            caplog.at_level(logging.WARNING, logger="api.auth.verification"),
            api_for(api_db_url, better_auth_url=auth_url) as api,
        ):
            refused = api.get(f"/api/{user_id}/tasks", headers=headers)
        assert "JWT_ISSUER" in assert_problem(refused, 401, "unauthorized")["detail"]
        assert warnings_of(caplog, "api.auth.verification") == [
            f"token refused: its iss is '{issuer}', and this API expects '{auth_url}' (JWT_ISSUER, else "
            "BETTER_AUTH_URL's origin); its signature verified, so set one to what the other says",
            f"token refused: its aud is '{audience}', and this API expects '{auth_url}' (JWT_AUDIENCE, "
            "else BETTER_AUTH_URL's origin); its signature verified, so set one to what the other says",
        ]

        with api_for(api_db_url, better_auth_url=auth_url, jwt_issuer=issuer, jwt_audience=audience) as api:
            served = api.get(f"/api/{user_id}/tasks", headers=headers)
        assert served.status_code == 200, served.text


def test_better_auth_url_naming_another_host_than_better_auth_knows_is_logged_with_both_origins(
    better_auth_installed: Path, api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys are fetched all the same (the same server answers at localhost and at 127.0.0.1),
    but Better Auth signs the origin of its own baseURL: every token is refused, and the log says why."""
    with better_auth(better_auth_installed) as auth_url:
        user_id, token = sign_up_and_get_token(auth_url + ROUTES, "ivan@example.com", "Ivan")
        elsewhere = auth_url.replace("127.0.0.1", "localhost")
        with (
            caplog.at_level(logging.WARNING, logger="api.auth.verification"),
            api_for(api_db_url, better_auth_url=elsewhere) as api,
        ):
            refused = api.get(f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {token}"})
    assert_problem(refused, 401, "unauthorized")
    assert f"its iss is '{auth_url}', and this API expects '{elsewhere}'" in "\n".join(
        warnings_of(caplog, "api.auth.verification")
    )


# What the API logs for the keys' URL when Better Auth publishes nothing there.
NO_KEYS_THERE = "HTTP 404 Not Found: no keys there. Better Auth publishes them at its basePath"


def test_better_auth_on_its_own_base_path_is_found_once_better_auth_url_ends_with_it(
    better_auth_installed: Path, api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """betterAuth({ basePath: "/auth" }): the value Better Auth is given as its baseURL is not enough,
    and the log says what is; with that basePath at the end of BETTER_AUTH_URL, tokens verify (their
    iss and aud are still the origin)."""
    with better_auth(better_auth_installed, basePath="/auth") as origin:
        user_id, token = sign_up_and_get_token(origin + "/auth", "bea@example.com", "Bea")
        headers = {"Authorization": f"Bearer {token}"}

        with (
            caplog.at_level(logging.WARNING, logger="api.auth.jwks"),
            api_for(api_db_url, keys_found=False, better_auth_url=origin) as api,
        ):
            wait_until(lambda: bool(warnings_of(caplog, "api.auth.jwks")), "a warning from api.auth.jwks", 30)
            unavailable = api.get(f"/api/{user_id}/tasks", headers=headers)
        assert_problem(unavailable, 503, "authentication-unavailable")
        assert warnings_of(caplog, "api.auth.jwks")[0].startswith(
            f"JWKS: cannot fetch {origin}/api/auth/jwks: {NO_KEYS_THERE}"
        )

        with api_for(api_db_url, better_auth_url=f"{origin}/auth") as api:
            served = api.get(f"/api/{user_id}/tasks", headers=headers)
        assert served.status_code == 200, served.text


def test_better_auth_without_its_jwt_plugin_is_named_in_the_log_and_in_the_session_tokens_401(
    better_auth_installed: Path, api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys' URL answers 404, and the session token, all such a frontend has to send, is a 401
    that says which token to send instead."""
    with (
        better_auth(better_auth_installed, jwt=False) as origin,
        signed_in(origin + ROUTES, "otto@example.com", "Otto") as (browser, user_id),
    ):
        assert browser.get("/token").status_code == 404
        session_token = browser.get("/get-session").json()["session"]["token"]
        with (
            caplog.at_level(logging.WARNING, logger="api.auth.jwks"),
            api_for(api_db_url, keys_found=False, better_auth_url=origin) as api,
        ):
            wait_until(lambda: bool(warnings_of(caplog, "api.auth.jwks")), "a warning from api.auth.jwks", 30)
            refused = api.get(f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {session_token}"})
    assert NO_KEYS_THERE in warnings_of(caplog, "api.auth.jwks")[0]
    assert "jwt() plugin" in warnings_of(caplog, "api.auth.jwks")[0]
    assert "Better Auth session token" in assert_problem(refused, 401, "unauthorized")["detail"]


def test_a_token_is_accepted_until_it_expires_after_sign_out_and_after_the_user_is_deleted(
    better_auth_installed: Path, api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """What the README says a frontend must know: a JWT is not revoked. Better Auth forgets the session
    and the user, and hands out no more tokens; the API, which never asks it, accepts the token it
    issued until its exp."""
    with better_auth(better_auth_installed) as origin, api_for(api_db_url, better_auth_url=origin) as api:
        with signed_in(origin + ROUTES, "sid@example.com", "Sid") as (browser, user_id):
            token = token_of(browser)
            assert browser.post("/sign-out", json={}).status_code == 200
            assert browser.get("/token").status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert api.get(f"/api/{user_id}/tasks", headers=headers).status_code == 200

        with signed_in(origin + ROUTES, "dee@example.com", "Dee") as (browser, user_id):
            token = token_of(browser)
            deleted = browser.post("/delete-user", json={"password": PASSWORD})
            assert deleted.status_code == 200, deleted.text
            assert (
                browser.post(
                    "/sign-in/email", json={"email": "dee@example.com", "password": PASSWORD}
                ).status_code
                == 401
            )
        created = api.post(
            f"/api/{user_id}/tasks", json={"title": "After"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201, created.text
        assert api_db.execute("select email from users where id = %s", [user_id]).fetchone() == (
            "dee@example.com",
        )
