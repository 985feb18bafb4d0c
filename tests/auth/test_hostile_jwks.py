"""A JWKS endpoint that misbehaves (a broken document, a body too large or too slow) costs a failed
fetch, counted and logged, never a 500 or a request held for as long as the endpoint likes; the
keys already held keep working."""

import asyncio
import gzip
import json
import logging
from typing import Any

import httpx
import pytest

from api.auth.jwks import JwksKeySet
from tests.auth.conftest import api_trusting, claims_for, get_tasks, user_with
from tests.auth.jwks_server import JwksServer, SigningKey, jwks_server
from tests.support import assert_problem, better_auth_id, free_port, now, scrape, value, wait_until

FETCHES = "todo_api_jwks_fetches_total"


def test_a_document_nested_too_deep_to_parse_is_a_failed_fetch_and_the_keys_are_kept(api_db_url: str) -> None:
    key, stranger = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        assert get_tasks(client, server, key).status_code == 200
        failed = value(scrape(str(client.base_url)), FETCHES, outcome="failed")

        server.document = b"[" * 100_000 + b"]" * 100_000
        # Issued before the keys were fetched, so the set as held proves its kid unknown.
        unknown = get_tasks(client, server, stranger, iat=now() - 60)

        assert unknown.status_code == 401
        assert "unknown kid" in unknown.json()["detail"]
        assert value(scrape(str(client.base_url)), FETCHES, outcome="failed") == failed + 1
        assert get_tasks(client, server, key).status_code == 200, "the keys held are kept"


def test_one_malformed_key_costs_only_itself(api_db_url: str) -> None:
    key = SigningKey.generate()
    malformed = {key: value for key, value in SigningKey.generate().jwk.items() if key != "alg"}
    with jwks_server() as server:
        server.document = json.dumps({"keys": [{**malformed, "crv": ["Ed25519"]}, key.jwk]}).encode()
        with api_trusting(api_db_url, server) as client:
            assert get_tasks(client, server, key).status_code == 200


def test_a_document_of_countless_unusable_keys_is_logged_in_a_few_lines(
    api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A million bytes of `{}` lists 330,000 keys the API cannot use. A warning for each held a worker
    of todo-api serve for 20 s (every user's requests with it) and wrote 72 MB of log, on a fetch any
    caller can cause with an unknown kid; the first ten are named, the rest counted in one line."""
    key, stranger = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        # Just under the 1 MB a fetch reads.
        document: dict[str, list[dict[str, Any]]] = {"keys": [{}] * 330_000 + [key.jwk]}
        server.document = json.dumps(document, separators=(",", ":")).encode()
        with caplog.at_level(logging.WARNING, logger="api.auth.jwks"):
            unknown = get_tasks(client, server, stranger, iat=now() - 60)
        known = get_tasks(client, server, key)

    assert "unknown kid" in assert_problem(unknown, 401, "unauthorized")["detail"]
    assert known.status_code == 200, "the document's one usable key is used"
    skipped = [record.getMessage() for record in caplog.records if "skipping" in record.getMessage()]
    assert skipped == [
        *["JWKS: skipping a key without a kid, which no token can name"] * 10,
        "JWKS: skipping 329990 more keys, not logged one by one",
    ]


def test_a_huge_document_is_refused_without_being_read_whole(api_db_url: str) -> None:
    key, stranger = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        failed = value(scrape(str(client.base_url)), FETCHES, outcome="failed")
        # Far more than the loopback's socket buffers hold: the server finishes sending only if
        # the API reads it all.
        server.document = b'{"keys": [' + b" " * 32_000_000 + b"]}"

        unknown = get_tasks(client, server, stranger, iat=now() - 60)

        assert unknown.status_code == 401
        assert value(scrape(str(client.base_url)), FETCHES, outcome="failed") == failed + 1
        wait_until(lambda: server.cut_off_count() == 1, "the key set server cut one fetch off", 30)
        assert get_tasks(client, server, key).status_code == 200, "the keys held are kept"


def test_a_compressed_answer_is_a_failed_fetch_never_decompressed(
    api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A few kB of gzip nested twice decode to gigabytes in one synchronous call, which no timeout
    interrupts: a worker grew by 2 GB and held every user's requests for 5 s, on a fetch any caller
    can cause with an unknown kid. The API asks for the key set uncompressed and refuses it otherwise."""
    key, newer = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        failed = value(scrape(str(client.base_url)), FETCHES, outcome="failed")
        published = json.dumps({"keys": [key.jwk, newer.jwk]}).encode()
        server.document = gzip.compress(gzip.compress(published))
        server.content_encoding = "gzip, gzip"

        with caplog.at_level(logging.WARNING, logger="api.auth.jwks"):
            # Signed after the keys were fetched: the key may be published since, so a fetch is made.
            refused = get_tasks(client, server, newer, iat=now() + 5)

        assert_problem(refused, 503, "authentication-unavailable")
        assert value(scrape(str(client.base_url)), FETCHES, outcome="failed") == failed + 1
        assert (
            f"JWKS: cannot fetch {server.jwks_url}: its answer is compressed (gzip, gzip), though the API"
            " asks for it uncompressed: turn compression off for that URL in the proxy or CDN in front of it"
            in [record.getMessage() for record in caplog.records]
        )
        assert get_tasks(client, server, key).status_code == 200, "the keys held are kept"

        # A label that compresses nothing (a charset sent by mistake, httpx ignored it) is no reason to
        # refuse the bytes: the verification probe of stop 82 found such a key set refused.
        server.document, server.content_encoding = published, "utf-8"
        assert get_tasks(client, server, newer, iat=now() + 5).status_code == 200


def test_a_dripping_endpoint_at_start_up_means_503_at_once_not_a_wait(api_db_url: str) -> None:
    """Before any key is fetched a JWKS token can only be a 503, and a request waiting on the
    background fetch of an endpoint that drips (each read within httpx's timeout) waited with it."""
    key = SigningKey.generate()
    with jwks_server(key) as server:
        server.drip_seconds = 60
        with api_trusting(api_db_url, server) as client:
            client.timeout = httpx.Timeout(15)
            response = get_tasks(client, server, key)

            assert_problem(response, 503, "authentication-unavailable")
            # Answered while the start-up fetch still drips: it neither waited for it nor fetched again.
            assert server.fetch_count() == 1


def test_keys_that_cannot_be_fetched_are_a_503_naming_the_settings_that_say_where(api_db_url: str) -> None:
    """A BETTER_AUTH_URL naming the wrong port or path: every token was a 503 saying only that the
    keys cannot be fetched, sending the frontend developer nowhere."""
    key = SigningKey.generate()
    with jwks_server(key) as server:
        server.down = True
        with api_trusting(api_db_url, server) as client:
            response = get_tasks(client, server, key)
    problem = assert_problem(response, 503, "authentication-unavailable")
    assert "BETTER_AUTH_URL" in problem["detail"]
    assert "BETTER_AUTH_JWKS_URL" in problem["detail"]


def test_a_dripping_endpoint_holds_no_request_past_the_fetch_timeout(api_db_url: str) -> None:
    """Each request needing a refetch waits for one bounded fetch, not for every fetch queued before it."""
    key = SigningKey.generate()
    strangers = [SigningKey.generate() for _ in range(3)]
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        server.drip_seconds = 60

        async def three_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=15) as http:
                return await asyncio.gather(*(_get(http, server, stranger) for stranger in strangers))

        responses = asyncio.run(three_at_once())

        assert [response.status_code for response in responses] == [401] * 3
        assert all("unknown kid" in response.json()["detail"] for response in responses)
        server.drip_seconds = 0
        assert get_tasks(client, server, key).status_code == 200, "the keys held are kept"


async def _get(http: httpx.AsyncClient, server: JwksServer, key: SigningKey) -> httpx.Response:
    # Issued before the keys were fetched, so the set as held proves its kid unknown.
    user_id = better_auth_id()
    user = user_with(key.sign(claims_for(server.base_url, user_id, iat=now() - 60)), user_id)
    return await http.get(user.tasks_url, headers=user.headers)


def _refreshed(url: str) -> bool:
    """Whether the key set at `url` was fetched (after the start-up fetch, one more)."""

    async def fetch() -> bool:
        async with JwksKeySet(url, refetch_cooldown=3600, refresh_interval=3600) as key_set:
            return await key_set.refresh()

    return asyncio.run(fetch())


def _failed_fetch_logs(url: str, caplog: pytest.LogCaptureFixture) -> set[str]:
    """The warnings fetching `url` logs, once it has failed (the start-up fetch and one more)."""
    with caplog.at_level(logging.WARNING, logger="api.auth.jwks"):
        assert _refreshed(url) is False
    return {record.getMessage() for record in caplog.records if record.name == "api.auth.jwks"}


@pytest.mark.parametrize(
    "coding",
    # Every other coding of the IANA registry too: dcz and pack200-gzip could leave the API's list unseen
    # (the mutation round of stop 84).
    [
        "x-gzip",
        "GZIP",
        "x-compress",
        "Deflate",
        "aes128gcm",
        "br",
        "compress",
        "dcb",
        "dcz",
        "exi",
        "pack200-gzip",
        "zstd",
    ],
)
def test_an_answer_in_any_coding_but_identity_is_refused_saying_so_whatever_its_spelling(
    caplog: pytest.LogCaptureFixture, coding: str
) -> None:
    """Codings are case-insensitive (RFC 9110, 8.4.1) and some have an x- alias: `GZIP`, `x-gzip`, or
    a registered coding the API did not list (aes128gcm), was read as it came and logged as "not JSON",
    which sent the operator looking at the wrong URL instead of at the proxy's compression."""
    key = SigningKey.generate()
    with jwks_server(key) as server:
        server.document = gzip.compress(json.dumps({"keys": [key.jwk]}).encode())
        server.content_encoding = coding
        assert _failed_fetch_logs(server.jwks_url, caplog) == {
            f"JWKS: cannot fetch {server.jwks_url}: its answer is compressed ({coding.lower()}), though"
            " the API asks for it uncompressed: turn compression off for that URL in the proxy or CDN in"
            " front of it"
        }


def test_the_key_set_is_asked_for_uncompressed_so_an_endpoint_that_compresses_when_asked_is_read() -> None:
    """Without `Accept-Encoding: identity` httpx asks for gzip, an endpoint (or CDN) that negotiates
    compresses, the refusal of a compressed answer fires on every fetch, and no JWKS token is accepted."""
    with jwks_server(SigningKey.generate()) as server:
        server.compresses_when_asked = True
        assert _refreshed(server.jwks_url) is True
    assert set(server.accept_encodings) == {"identity"}, server.accept_encodings


def test_a_key_set_of_one_key_is_logged_as_fetched_and_never_warned_of_as_unusable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One key is Better Auth's usual set: warning that it holds no usable key, on every fetch, while its
    tokens verify, is a false alarm the operator learns to ignore."""
    with jwks_server(SigningKey.generate()) as server, caplog.at_level(logging.INFO, logger="api.auth.jwks"):
        assert _refreshed(server.jwks_url) is True
    messages = [record.getMessage() for record in caplog.records if record.name == "api.auth.jwks"]
    assert f"JWKS: 1 key(s) from {server.jwks_url}" in messages, messages
    assert not [message for message in messages if "no usable key" in message], messages


@pytest.mark.parametrize(
    "published",
    [
        pytest.param([], id="none"),
        pytest.param([{**SigningKey.generate().jwk, "use": "enc"}], id="none-usable"),
    ],
)
def test_a_key_set_without_a_usable_key_is_a_warning(
    caplog: pytest.LogCaptureFixture, published: list[Any]
) -> None:
    """Every JWKS token is then refused, as after a failed fetch, which the operator is warned of."""
    with jwks_server() as server, caplog.at_level(logging.WARNING, logger="api.auth.jwks"):
        server.document = json.dumps({"keys": published}).encode()
        assert _refreshed(server.jwks_url) is True
    assert f"JWKS: no usable key from {server.jwks_url}: every token signed by a JWKS key is refused" in [
        record.getMessage() for record in caplog.records
    ]


def test_a_wrong_path_is_logged_as_the_404_it_got(caplog: pytest.LogCaptureFixture) -> None:
    with jwks_server(SigningKey.generate()) as server:
        url = server.base_url + "/auth/jwks"  # BETTER_AUTH_URL with a path Better Auth is not on
        assert _failed_fetch_logs(url, caplog) == {
            f"JWKS: cannot fetch {url}: HTTP 404 Not Found: no keys there. Better Auth publishes them at "
            "its basePath (/api/auth unless set) and /jwks, and only with its jwt() plugin enabled; "
            "another basePath goes at the end of BETTER_AUTH_URL (https://app.example.com/auth), a "
            "jwks.jwksPath or remoteUrl in BETTER_AUTH_JWKS_URL"
        }


@pytest.mark.parametrize(
    ("document", "why"),
    [
        pytest.param(
            b"<!DOCTYPE html><html>Sign in</html>",
            "its answer is not JSON: is that URL the JWKS endpoint?",
            id="a-web-page",
        ),
        pytest.param(b'{"error": "unauthorized"}', "not a JWK set: no 'keys' list", id="json-but-no-keys"),
        pytest.param(
            b'{"keys": [' + b" " * 2_000_000 + b"]}", "the JWK set is implausibly large", id="too-large"
        ),
        pytest.param(
            b"[" * 100_000 + b"]" * 100_000, "its answer is JSON nested too deep to read", id="too-deep"
        ),
    ],
)
def test_a_document_that_is_no_key_set_is_logged_saying_why_never_quoting_it(
    caplog: pytest.LogCaptureFixture, document: bytes, why: str
) -> None:
    with jwks_server(SigningKey.generate()) as server:
        server.document = document
        assert _failed_fetch_logs(server.jwks_url, caplog) == {f"JWKS: cannot fetch {server.jwks_url}: {why}"}


@pytest.mark.parametrize(
    ("location", "logged"),
    [
        ("https://admin:hunter2@keys.example.com/jwks.json?v=2", "https://keys.example.com/jwks.json"),
        ("/api/auth/jwks/", "{base_url}/api/auth/jwks/"),
    ],
)
def test_a_redirect_is_logged_with_where_it_pointed_and_not_followed(
    caplog: pytest.LogCaptureFixture, location: str, logged: str
) -> None:
    with jwks_server(SigningKey.generate()) as server:
        server.redirect_to = location
        logs = _failed_fetch_logs(server.jwks_url, caplog)
        target = logged.format(base_url=server.base_url)

        assert logs == {
            f"JWKS: cannot fetch {server.jwks_url}: HTTP 308 Permanent Redirect to {target}: redirects "
            "are not followed (if the keys are there, configure that URL)"
        }


def test_a_server_that_is_down_is_logged_as_a_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/auth/jwks"
    assert _failed_fetch_logs(url, caplog) == {f"JWKS: cannot fetch {url}: ConnectError (Connection refused)"}


def test_a_fetch_past_its_timeout_is_logged_saying_how_long_it_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It said only "TimeoutError", which named neither the bound nor that nothing was wrong with a
    document: an endpoint that drips, or a host that never answers, or its name server."""
    with jwks_server(SigningKey.generate()) as server:
        server.drip_seconds = 60
        assert _failed_fetch_logs(server.jwks_url, caplog) == {
            f"JWKS: cannot fetch {server.jwks_url}: no complete answer within 5 s"
        }
