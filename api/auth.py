"""Who is calling: verify the Bearer token into a Principal, or refuse with a 401.

Verification is split by algorithm family so that a token is only ever checked against keys of its
own kind: HS256 tokens against the shared secret, asymmetric tokens (Better Auth's JWKS) against
public keys. An HS256 token can never be checked against a public key, nor an EdDSA token against
the secret. Every refusal is a 401 whose detail says what was wrong, never what the token was.
"""

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import jwt
from cachetools import TLRUCache

from api.jwks import ASYMMETRIC_ALGORITHMS, JwksKeySet, KeysUnavailable, UnknownKey
from api.models import USER_ID_MAX_LENGTH
from api.problems import ProblemError

_EMAIL_MAX_LENGTH = 320
_NAME_MAX_LENGTH = 200
SHARED_SECRET_ALGORITHMS: tuple[str, ...] = ("HS256",)
_NOT_ACCEPTED = "The token is signed with an algorithm this API does not accept."


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the token vouches for them."""

    id: str
    email: str | None = None
    name: str | None = None


def unauthorized(detail: str, *, token_was_sent: bool = True) -> ProblemError:
    # RFC 6750: a request without credentials gets a bare challenge; a bad token names the error.
    challenge = 'Bearer error="invalid_token"' if token_was_sent else "Bearer"
    return ProblemError(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def authentication_unavailable() -> ProblemError:
    # Not a 401: the token may be perfectly good, and a 401 would send the user to sign in again.
    return ProblemError(
        503,
        "authentication-unavailable",
        "Authentication unavailable",
        "The keys that verify this token cannot be fetched from the auth server right now. "
        "Try again shortly.",
        headers={"Retry-After": "5"},
    )


@dataclass(frozen=True, slots=True)
class ClaimChecks:
    """What every token must satisfy besides its signature, whichever key signed it."""

    issuer: str | None
    audience: str | None
    leeway: int

    def decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=self.issuer,
            audience=self.audience,
            leeway=self.leeway,
            options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
        )
        return claims


class TokenVerifier(Protocol):
    @property
    def algorithms(self) -> tuple[str, ...]: ...

    async def verify(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        """The verified claims, or a jwt.PyJWTError (or a ProblemError of its own)."""
        ...


class SharedSecretVerifier:
    """HS256 tokens signed with BETTER_AUTH_SECRET (as frontends do with jose's SignJWT)."""

    algorithms = SHARED_SECRET_ALGORITHMS

    def __init__(self, secret: str, checks: ClaimChecks) -> None:
        self._secret = secret
        self._checks = checks

    async def verify(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        return self._checks.decode(token, self._secret, "HS256")


class JwksVerifier:
    """Asymmetric tokens (Better Auth's EdDSA by default) against the public key their `kid` names."""

    algorithms = tuple(ASYMMETRIC_ALGORITHMS)

    def __init__(self, key_set: JwksKeySet, checks: ClaimChecks) -> None:
        self.key_set = key_set
        self._checks = checks

    async def verify(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthorized("The token's header names no signing key (kid).")
        try:
            key = await self.key_set.key(kid)
        except KeysUnavailable:
            raise authentication_unavailable() from None
        except UnknownKey:
            raise unauthorized(
                "The token is signed with a key the auth server does not publish (unknown kid); "
                "was it issued by another Better Auth deployment?"
            ) from None
        if key.algorithm_name != header["alg"]:
            raise unauthorized(
                f"The token says it is signed with {header['alg']}, but its key is for {key.algorithm_name}."
            )
        return self._checks.decode(token, key, key.algorithm_name)


def _describe(error: jwt.PyJWTError) -> str:
    """A message that helps the frontend developer, without echoing the token."""
    match error:
        case jwt.ExpiredSignatureError():
            return "The token has expired; fetch a new one."
        case jwt.ImmatureSignatureError():
            return "The token is not valid yet (nbf or iat is in the future)."
        case jwt.InvalidIssuerError():
            return "The token was issued by someone this API does not trust (iss)."
        case jwt.InvalidAudienceError():
            return "The token is meant for another audience (aud)."
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


def _optional_text(claims: Mapping[str, Any], name: str, max_length: int) -> str | None:
    # Profile claims only decorate the user row; a malformed one is dropped, never stored.
    value = claims.get(name)
    if isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value:
        return value
    return None


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > USER_ID_MAX_LENGTH:
        raise unauthorized(
            f"The token's sub claim must be a user id of 1 to {USER_ID_MAX_LENGTH} characters."
        )
    if "\x00" in subject:
        raise unauthorized("The token's sub claim contains a NUL character.")
    return Principal(
        id=subject,
        email=_optional_text(claims, "email", _EMAIL_MAX_LENGTH),
        name=_optional_text(claims, "name", _NAME_MAX_LENGTH),
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    expires_at: float


class Authenticator:
    """Routes each token to the verifier for its algorithm family and builds the Principal.

    Tokens already verified are remembered (by their SHA-256, never past their `exp`), so a busy
    client pays for signature verification once per token rather than once per request.
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
        self._key_sets = [verifier.key_set for verifier in verifiers if isinstance(verifier, JwksVerifier)]
        self._clock = clock
        self._verified: TLRUCache[bytes, _Verified] = TLRUCache(
            maxsize=cache_size, ttu=lambda _key, value, _now: value.expires_at, timer=clock
        )

    async def __aenter__(self) -> Self:
        for key_set in self._key_sets:
            await key_set.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for key_set in self._key_sets:
            await key_set.__aexit__(kind, error, trace)

    async def authenticate(self, token: str) -> Principal:
        fingerprint = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(fingerprint)
        if remembered is not None and remembered.expires_at > self._clock():
            return remembered.principal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise unauthorized(_describe(error)) from None
        algorithm = header.get("alg")
        verifier = self._verifiers.get(algorithm) if isinstance(algorithm, str) else None
        if verifier is None:
            raise unauthorized(_NOT_ACCEPTED)
        try:
            claims = await verifier.verify(token, header)
        except jwt.PyJWTError as error:
            raise unauthorized(_describe(error)) from None
        principal = _principal(claims)
        # `exp` is required and PyJWT has checked it is a number.
        self._verified[fingerprint] = _Verified(principal, float(claims["exp"]))
        return principal
