"""The caller, as a verified token vouches for them, and the limits of what a token may say.

The limits are those of the `users` row the principal becomes (sql/migrations/0002_tasks_schema.sql);
`tests/db/test_schema_agreement.py` checks that the two agree.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.auth.errors import InvalidToken

USER_ID_MAX_LENGTH = 255
EMAIL_MAX_LENGTH = 320
NAME_MAX_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the token vouches for them."""

    id: str
    email: str | None = None
    name: str | None = None


def _optional_text(claims: Mapping[str, Any], name: str, max_length: int) -> str | None:
    # Profile claims only decorate the user row; a malformed one is dropped, never stored.
    value = claims.get(name)
    if isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value:
        return value
    return None


def _names_one_path_segment(user_id: str) -> bool:
    """Whether `/api/{user_id}/...` can reach this user's paths. A `/` splits the segment, and one
    sent as %2F names nothing (api/http/paths.py); `.` and `..` are dot segments that clients and proxies
    remove (RFC 3986, section 5.2.4), and a Location naming them leads elsewhere. Better Auth's ids
    are base62: only a token from another issuer, or made by hand, can fail this."""
    return "/" not in user_id and user_id not in (".", "..")


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The principal a verified token's claims name; InvalidToken when `sub` is not a usable user id."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > USER_ID_MAX_LENGTH:
        raise InvalidToken(
            f"The token's sub claim must be a user id of 1 to {USER_ID_MAX_LENGTH} characters."
        )
    if "\x00" in subject:
        raise InvalidToken("The token's sub claim contains a NUL character.")
    if not _names_one_path_segment(subject):
        raise InvalidToken(
            "The token's sub claim must be usable as one URL path segment, /api/{user_id}/...: "
            "it may not contain / nor be . or .."
        )
    return Principal(
        id=subject,
        email=_optional_text(claims, "email", EMAIL_MAX_LENGTH),
        name=_optional_text(claims, "name", NAME_MAX_LENGTH),
    )
