"""Development tokens: what `todo-api token` prints, signed like a frontend's HS256 token."""

import time
from typing import Any

import jwt


def mint_token(
    secret: str,
    user_id: str,
    *,
    email: str | None = None,
    name: str | None = None,
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if email is not None:
        claims["email"] = email
    if name is not None:
        claims["name"] = name
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
