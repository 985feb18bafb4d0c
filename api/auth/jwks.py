"""Better Auth's public keys: fetched from its JWKS endpoint without blocking the event loop.

Keys are fetched in the background at start-up (so a briefly unreachable auth server does not stop
the API from starting) and refreshed now and then (so a key removed from the set stops working).
A token naming a `kid` we do not hold triggers a fetch on the spot, but at most one such fetch per
cooldown: random kids must not turn the API into a load generator against the auth server. When
a fetch fails, the keys already held keep working. A fetch, start to end, takes at most its timeout,
reads at most _MAX_DOCUMENT_BYTES, and a document it cannot use is a failed fetch like any other.
"""

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from api.auth.errors import KeysUnavailable
from api.telemetry import metrics

logger = logging.getLogger(__name__)

# Each asymmetric algorithm with the key type (and curve) it needs: a key is used for exactly one
# algorithm, and a JWK whose alg, kty and crv disagree is not used at all.
ASYMMETRIC_ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "EdDSA": ("OKP", "Ed25519"),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
}
_ALGORITHM_FOR_CURVE = {"Ed25519": "EdDSA", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_MAX_DOCUMENT_BYTES = 1_000_000
# The content codings of the IANA HTTP Content Coding Registry that are not identity (they compress,
# encrypt or pack the body; httpx decodes some of them): an answer in any of them is refused, never
# decoded. Any other label (`identity`, a charset sent by mistake) changes nothing about the bytes,
# which are read as they come.
_COMPRESSIONS = frozenset(
    {
        "aes128gcm",
        "br",
        "compress",
        "dcb",
        "dcz",
        "deflate",
        "exi",
        "gzip",
        "pack200-gzip",
        "x-compress",
        "x-gzip",
        "zstd",
    }
)


class UnknownKey(Exception):  # noqa: N818
    """The key set holds no key with this id, even after fetching it again (or within the cooldown).

    Whether that proves the token bad depends on when it was issued: see `fetched_since`."""


def _algorithm(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm this key is for: its `alg`, else what its curve implies (RSA must say)."""
    algorithm, curve = jwk.get("alg"), jwk.get("crv")
    if algorithm is None and isinstance(curve, str):
        algorithm = _ALGORITHM_FOR_CURVE.get(curve)
    if not isinstance(algorithm, str) or algorithm not in ASYMMETRIC_ALGORITHMS:
        return None
    key_type, curve = ASYMMETRIC_ALGORITHMS[algorithm]
    if jwk.get("kty") != key_type or (curve is not None and jwk.get("crv") != curve):
        return None
    return algorithm


def _algorithm_unstated(jwk: Mapping[str, Any]) -> bool:
    """Whether this is a signing key left unused only for not naming its algorithm: RFC 7517 makes alg
    optional, and an RSA key may be for RS256 or PS256 alike (a curve names one, see `_algorithm`)."""
    kid = jwk.get("kid")
    return (
        isinstance(kid, str)
        and bool(kid)
        and jwk.get("use") in (None, "sig")
        and jwk.get("alg") is None
        and jwk.get("kty") == "RSA"
        and "d" not in jwk
    )


def kids_without_algorithm(document: Mapping[str, Any]) -> set[str]:
    """The kids `parse_key_set` leaves out because their keys do not name an algorithm: a token that
    names one is told so, rather than that the auth server does not publish its key."""
    return {jwk["kid"] for jwk in document["keys"] if isinstance(jwk, dict) and _algorithm_unstated(jwk)}


def _same_key(one: PyJWK, other: PyJWK) -> bool:
    """Whether two JWKs are one public key for one algorithm, however their JSON is written."""

    def public_bytes(key: PyJWK) -> bytes:
        encoded: bytes = key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return encoded

    return one.algorithm_name == other.algorithm_name and public_bytes(one) == public_bytes(other)


# A key set holds a few keys, but a document within _MAX_DOCUMENT_BYTES can list hundreds of
# thousands of unusable ones (`{}` each): a warning for every one held the worker's event loop for
# seconds, every user's requests with it, on a fetch any caller can cause with an unknown kid. Past
# this many, they are counted.
_SKIPPED_KEYS_LOGGED = 10


class _SkippedKeys:
    """The keys a document's parse leaves out: a warning for each of the first few, then a count."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, why: str, *args: object) -> None:
        self.count += 1
        if self.count <= _SKIPPED_KEYS_LOGGED:
            logger.warning("JWKS: skipping " + why, *args)

    def log_the_rest(self) -> None:
        if self.count > _SKIPPED_KEYS_LOGGED:
            logger.warning(
                "JWKS: skipping %d more keys, not logged one by one", self.count - _SKIPPED_KEYS_LOGGED
            )


def parse_key_set(document: object) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by kid. Anything doubtful is left out."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set: no 'keys' list")
    keys: dict[str, PyJWK] = {}
    ambiguous: set[str] = set()
    skipped = _SkippedKeys()
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid, use = jwk.get("kid"), jwk.get("use")
        algorithm = _algorithm(jwk)
        if _algorithm_unstated(jwk):
            skipped.skip("key %r, which does not say which algorithm (alg) it is for", kid)
            continue
        if not isinstance(kid, str) or not kid:
            skipped.skip("a key without a kid, which no token can name")
            continue
        if use not in (None, "sig"):
            skipped.skip("key %r, which is not for signatures (use %r)", kid, use)
            continue
        key_ops = jwk.get("key_ops")
        if key_ops is not None and not (isinstance(key_ops, list) and "verify" in key_ops):
            # RFC 7517, section 4.3: what the key may be used for, which then does not include this.
            skipped.skip("key %r, which is not for verifying signatures (key_ops %r)", kid, key_ops)
            continue
        if algorithm is None:
            kind = ", ".join(f"{name} {jwk[name]!r}" for name in ("kty", "crv", "alg") if name in jwk)
            skipped.skip("key %r, of a kind this API does not verify tokens with (%s)", kid, kind)
            continue
        if "d" in jwk:
            skipped.skip("key %r, which includes its private part", kid)
            continue
        try:
            key = PyJWK(jwk, algorithm)
        except (PyJWTError, TypeError, ValueError) as error:
            skipped.skip("key %r: %s", kid, type(error).__name__)
            continue
        if weakness := key.Algorithm.check_key_length(key.key):
            # RFC 7518, section 3.3: RSA keys of 2048 bits or more MUST be used. A shorter one can be
            # factored, and whoever does can sign for any user; PyJWT would only warn, on every token.
            skipped.skip("key %r: %s", kid, weakness)
            continue
        if kid in keys and not _same_key(keys[kid], key):
            ambiguous.add(kid)
        keys[kid] = key
    for kid in ambiguous:
        # Two keys under one kid: which one a token meant is anyone's guess, so neither is used.
        skipped.skip("kid %r, which names more than one key", kid)
        del keys[kid]
    skipped.log_the_rest()
    return keys


def _without_userinfo(url: str) -> str:
    """The URL as logged: a user and password in it (https://user:password@host), and its query
    (which may carry a key), are left out."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))


def _innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of `error`'s chain: httpx wraps the OSError that says what happened."""
    seen = {id(error)}
    while (cause := error.__cause__ or error.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        error = cause
    return error


# Better Auth answers 404 at its JWKS path when its jwt() plugin is not enabled, and a Better Auth
# mounted elsewhere is not there at all: what the operator changes is in one place or the other.
_NOTHING_PUBLISHED = (
    "no keys there. Better Auth publishes them at its basePath (/api/auth unless set) and /jwks, and "
    "only with its jwt() plugin enabled; another basePath goes at the end of BETTER_AUTH_URL "
    "(https://app.example.com/auth), a jwks.jwksPath or remoteUrl in BETTER_AUTH_JWKS_URL"
)


def _why(error: Exception) -> str:
    """Why a fetch failed, in terms an operator can act on: the HTTP status (a wrong path answers 404,
    a server that is down does not answer at all), where a redirect pointed, or why no connection was
    made. Never the body: a misconfigured URL could point at something private."""
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        if response.status_code == 404:
            return f"{status}: {_NOTHING_PUBLISHED}"
        if not response.has_redirect_location:
            return status
        try:
            target = _without_userinfo(str(response.url.join(response.headers["Location"])))
        except (httpx.InvalidURL, ValueError):
            target = "a Location that is not a URL"
        # Following would trust keys from wherever the endpoint sends us; the operator decides that.
        return f"{status} to {target}: redirects are not followed (if the keys are there, configure that URL)"
    if isinstance(error, httpx.TransportError):
        cause = _innermost(error)
        if isinstance(cause, ConnectionError) and cause.errno:
            # "Connection refused", rather than asyncio's "Connect call failed ('127.0.0.1', 80)".
            reason = os.strerror(cause.errno)
        else:
            reason = next(iter(str(cause).splitlines()), "")
        return f"{type(error).__name__} ({reason})" if reason else type(error).__name__
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        # A web page where the keys should be (a frontend's catch-all route answering 200, say).
        return "its answer is not JSON: is that URL the JWKS endpoint?"
    if isinstance(error, RecursionError):
        return "its answer is JSON nested too deep to read"
    if isinstance(error, ValueError):
        return str(error)  # what `parse_key_set` or `_download` found wrong, in words of our own
    return type(error).__name__


class JwksKeySet:
    """The public keys at one JWKS URL, kept current. Use as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        refetch_cooldown: float,
        refresh_interval: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._logged_url = _without_userinfo(url)
        self._refetch_cooldown = refetch_cooldown
        self._refresh_interval = refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._kids_without_algorithm: set[str] = set()
        self._fetched = False
        self._fetched_at: float | None = None  # when the last successful fetch began, on `clock`
        self._last_refetch: float | None = None
        self._attempts = 0  # fetches begun
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._on_withdrawal: list[Callable[[], None]] = []

    def when_a_key_is_withdrawn(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each fetch that no longer holds a key held before (gone, or its kid
        naming another key): what that key verified is no longer trusted."""
        self._on_withdrawal.append(callback)

    async def __aenter__(self) -> Self:
        # Uncompressed only: a few kB of gzip, nested twice, decode to gigabytes in one synchronous
        # call, which no timeout interrupts (tests/auth/test_hostile_jwks.py), and a key set is too
        # small for compression to save anything.
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
        )
        self._refresher = asyncio.create_task(self._keep_fresh(), name="jwks-refresher")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._client is not None:
            await self._client.aclose()

    @property
    def fetched(self) -> bool:
        """Whether a key set has ever been fetched (an empty one counts)."""
        return self._fetched

    def fetched_since(self, signed_by: float | None) -> bool:
        """Whether the keys held were fetched after a token signed by `signed_by` (Unix time) was
        signed, so that a kid they lack was not published for it (the auth server publishes a key
        before signing with it). Without a time, a fetch within the cooldown is as recent as we can tell."""
        if self._fetched_at is None:
            return False
        now = time.time()
        # When that fetch began, on the wall clock as it reads now: stepped back since (NTP), a fetch
        # kept as the time it read then looked newer than every token, each a 401 for a key published
        # since rather than a wait for it (the clock probe: 600 s back, for as long as the step).
        began = now - (self._clock() - self._fetched_at)
        if signed_by is None:
            signed_by = now - self._refetch_cooldown
        return began >= signed_by

    def retry_after_seconds(self) -> int:
        """How long a client refused for want of a key should wait before asking again: until the
        fetch under way ends (at most its timeout), else until the cooldown lets a token naming a
        kid we lack make us fetch the set again (at least a second)."""
        if self._lock.locked():
            return math.ceil(self._timeout)
        if self._last_refetch is None:
            return 1
        return max(1, math.ceil(self._last_refetch + self._refetch_cooldown - self._clock()))

    def publishes(self, kid: str, key: object) -> bool:
        """Whether the key set, as last fetched, holds `key` under `kid`: not just some key by that
        name, since a kid withdrawn may come back naming another key."""
        return self._keys.get(kid) is key

    def publishes_without_algorithm(self, kid: str) -> bool:
        """Whether the key set, as last fetched, has a key under `kid` that it does not say the
        algorithm of, and so cannot be used."""
        return kid in self._kids_without_algorithm

    async def key(self, kid: str) -> PyJWK:
        """The key named `kid`, fetching the set again if we lack it and the cooldown allows."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._fetched and self._lock.locked():
            # Start-up, or an auth server that is down: the fetch under way may take its whole
            # timeout, and waiting for it would end, at best, in the 503 we can answer now.
            raise KeysUnavailable(self.url, retry_after_seconds=self.retry_after_seconds())
        attempts = self._attempts
        async with self._lock:
            key = self._keys.get(kid)
            now = self._clock()
            cooled_down = self._last_refetch is None or now - self._last_refetch >= self._refetch_cooldown
            # A fetch begun while this request waited is as fresh as one it would make: making
            # another would queue every waiter behind one fetch more.
            if key is None and cooled_down and self._attempts == attempts:
                self._last_refetch = now
                await self._fetch()
                key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._fetched:
            raise KeysUnavailable(self.url, retry_after_seconds=self.retry_after_seconds())
        raise UnknownKey(kid)

    async def refresh(self) -> bool:
        """Fetch the key set now; False (keeping the keys we hold) when that fails."""
        async with self._lock:
            return await self._fetch()

    async def _fetch(self) -> bool:
        self._attempts += 1
        began = self._clock()
        try:
            # httpx's timeout bounds each read; this bounds the fetch, however slowly a body drips.
            async with asyncio.timeout(self._timeout):
                document = await self._download()
            parsed = json.loads(document)
            keys = parse_key_set(parsed)
        except (httpx.HTTPError, TimeoutError, ValueError, RecursionError) as error:
            # RecursionError: JSON nested deeper than the parser's stack (a hostile endpoint's doing).
            # TimeoutError: the bound above, whatever took that long (a name server that never
            # answers, a host that accepts and says nothing, a body that drips).
            why = (
                f"no complete answer within {self._timeout:g} s"
                if isinstance(error, TimeoutError)
                else _why(error)
            )
            logger.warning("JWKS: cannot fetch %s: %s", self._logged_url, why)
            metrics.jwks_fetches.labels("failed").inc()
            return False
        # A key fetched again is the object already held, so what it verified stays trusted.
        held = self._keys
        self._keys = {
            kid: held[kid] if kid in held and _same_key(held[kid], key) else key for kid, key in keys.items()
        }
        self._kids_without_algorithm = kids_without_algorithm(parsed)
        if any(self._keys.get(kid) is not key for kid, key in held.items()):
            for callback in self._on_withdrawal:
                callback()
        self._fetched = True
        self._fetched_at = began
        metrics.jwks_fetches.labels("fetched").inc()
        if keys:
            logger.info("JWKS: %d key(s) from %s", len(keys), self._logged_url)
        else:
            # Every token it would verify is refused: as much an operator's to fix as a failed fetch.
            logger.warning(
                "JWKS: no usable key from %s: every token signed by a JWKS key is refused", self._logged_url
            )
        return True

    async def _download(self) -> bytes:
        """The body, read only while it stays within _MAX_DOCUMENT_BYTES, and never decompressed."""
        if self._client is None:
            raise RuntimeError("JwksKeySet is used outside `async with`")
        async with self._client.stream("GET", self.url) as response:
            response.raise_for_status()
            codings = [
                coding.strip().lower()
                for coding in response.headers.get_list("Content-Encoding", split_commas=True)
            ]
            if compressed := [coding for coding in codings if coding in _COMPRESSIONS]:
                raise ValueError(
                    f"its answer is compressed ({', '.join(compressed)}), though the API asks for it"
                    " uncompressed: turn compression off for that URL in the proxy or CDN in front of it"
                )
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > _MAX_DOCUMENT_BYTES:
                    # Leaving `stream` unread closes the connection: the rest is never received.
                    raise ValueError("the JWK set is implausibly large")
        return bytes(body)

    async def _keep_fresh(self) -> None:
        failures = 0
        while True:
            try:
                refreshed = await self.refresh()
            except Exception:
                # A bug here must not silently end the refreshing for the life of the process.
                logger.exception("JWKS: refreshing %s failed", self._logged_url)
                refreshed = False
            if refreshed:
                failures = 0
                await asyncio.sleep(self._refresh_interval)
            else:
                # Back off from 1 s, so a start-up race with the auth server resolves quickly.
                failures += 1
                await asyncio.sleep(min(2.0 ** (failures - 1), self._refresh_interval))
