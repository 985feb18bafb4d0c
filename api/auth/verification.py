"""Verify a bearer token into a Principal and its expiry (`VerifiedToken`), or refuse it with
InvalidToken.

Verification is split by algorithm family so that a token is only ever checked against keys of its
own kind: HS256 tokens against the shared secret, asymmetric tokens (Better Auth's JWKS) against
public keys. An HS256 token can never be checked against a public key, nor an EdDSA token against
the secret. Every refusal says what was wrong, never what the token was.
"""

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import jwt
from cachetools import TLRUCache
from jwt.types import Options
from jwt.utils import base64url_decode

from api.auth.errors import InvalidToken, KeysUnavailable
from api.auth.jwks import ASYMMETRIC_ALGORITHMS, JwksKeySet, UnknownKey
from api.auth.principal import Principal, principal_from_claims
from api.settings import Settings

logger = logging.getLogger(__name__)

SHARED_SECRET_ALGORITHMS: tuple[str, ...] = ("HS256",)
_NOT_ACCEPTED = "The token is signed with an algorithm this API does not accept."


@dataclass(frozen=True, slots=True)
class ClaimChecks:
    """What every token must satisfy besides its signature, whichever key signed it."""

    issuer: str | None
    audience: str | None
    leeway: int

    def decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            self._log_mismatch(_signed_claims(token, key, algorithm))
            raise
        except (jwt.DecodeError, jwt.ExpiredSignatureError) as error:
            if not isinstance(error, jwt.InvalidSignatureError):
                # PyJWT refuses an exp or nbf that is no number with the error it gives a token it
                # cannot parse at all, and reads an exp of true or false as 1 or 0, long expired (a
                # client told so fetches another token just as broken): once the signature
                # verifies, name the claim.
                _refuse_malformed(_signed_claims(token, key, algorithm))
            raise
        _refuse_malformed(claims)
        return claims

    def _log_mismatch(self, claims: Mapping[str, Any]) -> None:
        """PyJWT checks iss and aud only once the signature verifies: a key or secret this API trusts
        signed the token, for another issuer or audience than it expects. No caller can cause that;
        the API and the auth server are configured apart (BETTER_AUTH_URL http://127.0.0.1:3000 for
        a Better Auth whose baseURL is http://localhost:3000, or a jwt.issuer Better Auth was given
        and JWT_ISSUER was not), and only the log can show the operator both values."""
        for claim, expected, setting in (
            ("iss", self.issuer, "JWT_ISSUER"),
            ("aud", self.audience, "JWT_AUDIENCE"),
        ):
            given = claims.get(claim)
            if expected is None or given == expected or (isinstance(given, list) and expected in given):
                continue
            logger.warning(
                "token refused: its %s is %r, and this API expects %r (%s, else BETTER_AUTH_URL's origin); "
                "its signature verified, so set one to what the other says",
                claim,
                given,
                expected,
                setting,
            )


# The signature alone, to read what it vouches for when a claim made PyJWT refuse the token.
_SIGNATURE_ONLY: Options = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_aud": False,
    "verify_sub": False,
    "verify_jti": False,
}


def _signed_claims(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], options=_SIGNATURE_ONLY)
    except jwt.PyJWTError:
        return {}  # not signed, or not a JWT: the first error says so
    return claims


# A NumericDate is a JSON number of seconds (RFC 7519); PyJWT also takes numeric strings and any
# float. Past the year 9999 a date is no date: 1e300 would make a token that never expires.
_LATEST_NUMERIC_DATE = 253_402_300_799
_TIME_CLAIMS = ("exp", "nbf", "iat")


def _not_a_numeric_date(name: str) -> str:
    return f"The token's {name} claim must be a number of seconds since 1970 (a NumericDate)."


def _refuse_malformed(claims: Mapping[str, Any]) -> None:
    """Claims a signature vouches for can still be unusable: refuse them before anything reads them."""
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= _LATEST_NUMERIC_DATE
        ):
            raise InvalidToken(_not_a_numeric_date(name))
    try:
        json.dumps(claims, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (a JSON \ud800 escape) decodes in Python but is no text Postgres can store.
        raise InvalidToken("The token's claims are not valid Unicode text.") from None


class TokenVerifier(Protocol):
    @property
    def algorithms(self) -> tuple[str, ...]: ...

    async def verify(self, token: str, header: Mapping[str, Any]) -> tuple[dict[str, Any], object]:
        """The verified claims and the key that verified them, or a jwt.PyJWTError (or InvalidToken,
        KeysUnavailable of its own)."""
        ...

    def still_trusts(self, header: Mapping[str, Any], key: object) -> bool:
        """Whether `key`, which verified a token with this header, is still one to trust."""
        ...


_SIGNED_WITH_ANOTHER_KEY = (
    "The token's signature does not verify with this API's BETTER_AUTH_SECRET, which HS256 tokens are "
    "checked against: the frontend must sign with that very secret (or the token was changed after)."
)


class SharedSecretVerifier:
    """HS256 tokens signed with BETTER_AUTH_SECRET (as frontends do with jose's SignJWT)."""

    algorithms = SHARED_SECRET_ALGORITHMS

    def __init__(self, secret: str, checks: ClaimChecks) -> None:
        self._secret = secret
        self._checks = checks

    async def verify(self, token: str, header: Mapping[str, Any]) -> tuple[dict[str, Any], object]:
        try:
            return self._checks.decode(token, self._secret, "HS256"), None
        except jwt.InvalidSignatureError:
            # Most often the frontend signs with a secret of its own (or, in development, the API
            # uses the one it made): say which setting the two sides must share.
            raise InvalidToken(_SIGNED_WITH_ANOTHER_KEY) from None

    def still_trusts(self, header: Mapping[str, Any], key: object) -> bool:
        return True  # the secret changes only with a restart, which forgets every verified token


class JwksVerifier:
    """Asymmetric tokens (Better Auth's EdDSA by default) against the public key their `kid` names."""

    algorithms = tuple(ASYMMETRIC_ALGORITHMS)

    def __init__(self, key_set: JwksKeySet, checks: ClaimChecks) -> None:
        self.key_set = key_set
        self._checks = checks

    async def verify(self, token: str, header: Mapping[str, Any]) -> tuple[dict[str, Any], object]:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("The token's header names no signing key (kid).")
        arrived = time.time()
        try:
            # KeysUnavailable passes up: the token may be perfectly good, so it is no 401.
            key = await self.key_set.key(kid)
        except UnknownKey:
            if self.key_set.publishes_without_algorithm(kid):
                raise InvalidToken(
                    "The token's key (kid) is published without the algorithm it is for (alg), which "
                    "its type does not imply, so this API cannot use it: the auth server must state it."
                ) from None
            _refuse_whatever_key_signed_it(token, self._checks)
            if not self.key_set.fetched_since(_signed_by(token, arrived, self._checks.leeway)):
                # Perhaps signed by a key published since we last fetched the set, which the
                # cooldown (or a failed fetch) keeps us from doing again now.
                wait, url = self.key_set.retry_after_seconds(), self.key_set.url
                raise KeysUnavailable(url, retry_after_seconds=wait, unpublished_kid=True) from None
            raise InvalidToken(_UNKNOWN_KID) from None
        if key.algorithm_name != header["alg"]:
            raise InvalidToken(
                f"The token says it is signed with {header['alg']}, but its key is for {key.algorithm_name}."
            )
        return self._checks.decode(token, key, key.algorithm_name), key

    def still_trusts(self, header: Mapping[str, Any], key: object) -> bool:
        """While the auth server still publishes the token's key under its kid: one it withdraws (a
        key rotated out, or a leaked one) stops every token it signed, however far off their `exp`,
        and so does a kid it reuses for another key."""
        return self.key_set.publishes(header["kid"], key)


_UNKNOWN_KID = (
    "The token is signed with a key the auth server does not publish (unknown kid); "
    "was it issued by another Better Auth deployment?"
)

# The claims alone, unsigned: whether any key could make the token valid now.
_CLAIMS_ONLY: Options = {
    "verify_signature": False,
    "verify_exp": True,
    "verify_nbf": True,
    "verify_iat": True,
    "verify_iss": True,
    "require": ["exp", "sub"],
}


def _refuse_whatever_key_signed_it(token: str, checks: ClaimChecks) -> None:
    """401 for a token its own claims refuse (expired, issued or valid from further ahead than the
    leeway, without an `exp`, for another issuer or audience than `checks` expect, with a time that is
    no date, or a `sub` that names no user), checked before its kid is taken for one published since:
    no key could admit it, and the 503 that waits for such a key had anyone who sent an `iat` in the
    future make the API say it cannot authenticate. A payload that is not JSON is left to the checks
    that follow."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        _refuse_malformed(claims)
        jwt.decode(
            token,
            options={**_CLAIMS_ONLY, "verify_aud": checks.audience is not None},
            issuer=checks.issuer,
            audience=checks.audience,
            leeway=checks.leeway,
        )
    except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
        # Most likely another deployment's token, which its unknown kid says best; with the
        # signature unchecked, no log names the two values as it does for a signed one.
        raise InvalidToken(_UNKNOWN_KID) from None
    except jwt.PyJWTError as error:
        if isinstance(error, _NO_KEY_ADMITS):
            raise InvalidToken(_describe(error)) from None
        return
    principal_from_claims(claims)  # a `sub` that names no user is refused as a signed one is


# What `_refuse_whatever_key_signed_it` refuses: whatever key signed the token, its claims fail so.
_NO_KEY_ADMITS = (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError, jwt.MissingRequiredClaimError)


def _signed_by(token: str, arrived: float, leeway: int) -> float | None:
    """The latest the token can have been signed, by its `iat` (whole seconds, so up to a second
    more, and the auth server's clock up to `leeway` behind this one's, as the claim checks allow it
    ahead) and by when it arrived; None when it does not say. Its signature is unchecked, so this
    only chooses between two refusals (401 or 503); it never admits anyone."""
    try:
        issued_at = jwt.decode(token, options={"verify_signature": False}).get("iat")
    except jwt.PyJWTError:
        return None
    if (
        isinstance(issued_at, bool)
        or not isinstance(issued_at, int | float)
        or not 0 <= issued_at <= _LATEST_NUMERIC_DATE
    ):
        return None
    return min(issued_at + 1.0 + leeway, arrived)


# A JWT is three parts joined by dots. What a Better Auth frontend most often sends instead is its
# session token (one part, or two in the signed session cookie): what its useSession() and its
# bearer() plugin hand out, and all there is when the jwt() plugin was forgotten.
_NOT_A_JWT = (
    "The token is not a signed JWT (three base64url parts joined by dots). A Better Auth session token "
    "is none: send the JWT its jwt() plugin issues (authClient.token(), or GET /api/auth/token)."
)


def _unverified_header(token: str) -> dict[str, Any]:
    if token.count(".") != 2:
        raise InvalidToken(_NOT_A_JWT)
    try:
        return jwt.get_unverified_header(token)
    except jwt.DecodeError as error:
        raise InvalidToken(_describe(error)) from None
    except jwt.PyJWTError:
        # The header is JSON, but PyJWT refuses a parameter in it with an error that does not say
        # which: a kid that is not a string, or a crit it does not support. Tell the two apart.
        header = json.loads(base64url_decode(token.encode().partition(b".")[0]))  # as PyJWT read it
        if "kid" in header and not isinstance(header["kid"], str):
            raise InvalidToken("The token's kid header parameter must be a string.") from None
        raise InvalidToken(
            "The token's crit header parameter is malformed or names an extension this API does not support."
        ) from None


def _describe(error: jwt.PyJWTError) -> str:
    """A message that helps the frontend developer, without echoing the token."""
    match error:
        case jwt.ExpiredSignatureError():
            return "The token has expired; fetch a new one."
        case jwt.ImmatureSignatureError():
            return "The token is not valid yet (nbf or iat is in the future)."
        case jwt.InvalidIssuedAtError():
            return _not_a_numeric_date("iat")  # PyJWT's only reason for this one
        case jwt.exceptions.InvalidJTIError():
            return "The token's jti claim must be a string."
        case jwt.InvalidIssuerError():
            return (
                "The token's issuer (iss) is not the one this API expects (its JWT_ISSUER, else its "
                "BETTER_AUTH_URL's origin); the API's log names both."
            )
        case jwt.InvalidAudienceError():
            return (
                "The token is meant for another audience (aud) than this API expects (its JWT_AUDIENCE, "
                "else its BETTER_AUTH_URL's origin); the API's log names both."
            )
        case jwt.exceptions.InvalidSubjectError():
            return "The token's sub claim must be a string: the user id."
        case jwt.MissingRequiredClaimError():
            return f"The token lacks the required {error.claim!r} claim."
        case jwt.InvalidSignatureError():
            return "The token's signature does not verify."
        case jwt.InvalidAlgorithmError():
            return _NOT_ACCEPTED
        case jwt.DecodeError():
            return "The token is not a well-formed JWT."
    return "The token is invalid."


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a token that verified vouches for: the caller, until `expires_at` (its `exp`, in seconds
    since the epoch; the claim checks accept it for JWT_LEEWAY_SECONDS more)."""

    principal: Principal
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Remembered:
    verified: VerifiedToken
    verifier: TokenVerifier
    header: Mapping[str, Any]
    key: object

    def trusted(self, now: float) -> bool:
        return self.verified.expires_at > now and self.verifier.still_trusts(self.header, self.key)


class Authenticator:
    """Routes each token to the verifier for its algorithm family and builds the VerifiedToken.

    Tokens already verified are remembered (by their SHA-256, never past their `exp`, and only while
    the key that verified them is still trusted), so a busy client pays for signature verification
    once per token rather than once per request.
    """

    def __init__(
        self,
        verifiers: list[TokenVerifier],
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not verifiers:
            raise ValueError("no way to verify tokens is configured")
        self._verifiers = {algorithm: verifier for verifier in verifiers for algorithm in verifier.algorithms}
        self.key_sets = [verifier.key_set for verifier in verifiers if isinstance(verifier, JwksVerifier)]
        self._clock = clock
        self._verified: TLRUCache[bytes, _Remembered] = TLRUCache(
            maxsize=cache_size, ttu=lambda _key, value, _now: value.verified.expires_at, timer=clock
        )

    def when_a_key_is_withdrawn(self, callback: Callable[[], None]) -> None:
        """Call `callback` once a key that may have verified a token is no longer trusted: tokens
        remembered here are asked again at their next use, and so must be what holds one open (an
        event stream). A shared secret changes only with a restart."""
        for key_set in self.key_sets:
            key_set.when_a_key_is_withdrawn(callback)

    async def __aenter__(self) -> Self:
        for key_set in self.key_sets:
            await key_set.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for key_set in self.key_sets:
            await key_set.__aexit__(kind, error, trace)

    async def authenticate(self, token: str) -> VerifiedToken:
        fingerprint = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(fingerprint)
        if remembered is not None and remembered.trusted(self._clock()):
            return remembered.verified
        header = _unverified_header(token)
        algorithm = header.get("alg")
        verifier = self._verifiers.get(algorithm) if isinstance(algorithm, str) else None
        if verifier is None:
            raise InvalidToken(_NOT_ACCEPTED)
        try:
            claims, key = await verifier.verify(token, header)
        except jwt.PyJWTError as error:
            raise InvalidToken(_describe(error)) from None
        # `exp` is required and PyJWT has checked it is a number.
        verified = VerifiedToken(principal_from_claims(claims), float(claims["exp"]))
        self._verified[fingerprint] = _Remembered(verified, verifier, header, key)
        return verified


def build_authenticator(settings: Settings) -> Authenticator:
    """A verifier per configured key source; each accepts only its own algorithm family."""
    checks = ClaimChecks(
        issuer=settings.expected_issuer,
        audience=settings.expected_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    if missing := settings.missing_token_source():
        raise ValueError(missing)
    verifiers: list[TokenVerifier] = []
    if settings.better_auth_secret is not None:
        verifiers.append(SharedSecretVerifier(settings.better_auth_secret.get_secret_value(), checks))
    if settings.jwks_url is not None:
        key_set = JwksKeySet(settings.jwks_url, refetch_cooldown=settings.jwks_refetch_cooldown_seconds)
        verifiers.append(JwksVerifier(key_set, checks))
    return Authenticator(verifiers)
