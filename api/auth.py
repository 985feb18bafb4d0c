"""Who is calling: verify the Bearer token into a Principal, or refuse with a 401.

Verification is split by algorithm family so that a token is only ever checked against keys of its
own kind: HS256 tokens against the shared secret, asymmetric tokens (Better Auth's JWKS, a separate
verifier) against public keys. An HS256 token can never be checked against a public key.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from api.models import USER_ID_MAX_LENGTH
from api.problems import ProblemError

_EMAIL_MAX_LENGTH = 320
_NAME_MAX_LENGTH = 200


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


class TokenVerifier(Protocol):
    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims, or a jwt.PyJWTError."""
        ...


class SharedSecretVerifier:
    """HS256 tokens signed with BETTER_AUTH_SECRET (as frontends do with jose's SignJWT)."""

    algorithms = ("HS256",)

    def __init__(self, secret: str, *, issuer: str | None, audience: str | None, leeway: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    def verify(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            self._secret,
            algorithms=list(self.algorithms),
            issuer=self._issuer,
            audience=self._audience,
            leeway=self._leeway,
            options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
        )
        return claims


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
        case jwt.MissingRequiredClaimError():
            return f"The token lacks the required {error.claim!r} claim."
        case jwt.InvalidSignatureError():
            return "The token's signature does not verify."
        case jwt.InvalidAlgorithmError():
            return "The token is signed with an algorithm this API does not accept."
        case jwt.DecodeError():
            return "The token is not a well-formed JWT."
    return "The token is invalid."


def _optional_text(claims: dict[str, Any], name: str, max_length: int) -> str | None:
    # Profile claims only decorate the user row; a malformed one is dropped, never stored.
    value = claims.get(name)
    if isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value:
        return value
    return None


class Authenticator:
    """Routes each token to the verifier for its algorithm family and builds the Principal."""

    def __init__(self, verifiers: dict[str, TokenVerifier]) -> None:
        if not verifiers:
            raise ValueError("no way to verify tokens is configured")
        self._verifiers = verifiers

    def authenticate(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as error:
            raise unauthorized(_describe(error)) from None
        verifier = self._verifiers.get(algorithm) if isinstance(algorithm, str) else None
        if verifier is None:
            raise unauthorized("The token is signed with an algorithm this API does not accept.")
        try:
            claims = verifier.verify(token)
        except jwt.PyJWTError as error:
            raise unauthorized(_describe(error)) from None
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
