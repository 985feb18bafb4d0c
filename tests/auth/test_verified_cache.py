"""The cache of verified tokens: a repeated token skips signature verification, but never past its exp."""

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from api.auth.errors import InvalidToken
from api.auth.principal import Principal
from api.auth.verification import Authenticator, ClaimChecks, SharedSecretVerifier
from tests.support import SECRET, now, sign


class CountingVerifier:
    """The real HS256 verifier, counting how often a signature is actually checked."""

    algorithms = ("HS256",)

    def __init__(self) -> None:
        self._inner = SharedSecretVerifier(SECRET, ClaimChecks(issuer=None, audience=None, leeway=0))
        self.calls = 0

    async def verify(self, token: str, header: Mapping[str, Any]) -> tuple[dict[str, Any], object]:
        self.calls += 1
        return await self._inner.verify(token, header)

    def still_trusts(self, header: Mapping[str, Any], key: object) -> bool:
        return self._inner.still_trusts(header, key)


def _authenticate(authenticator: Authenticator, token: str) -> Principal:
    return asyncio.run(authenticator.authenticate(token)).principal


def test_a_repeated_token_is_verified_once() -> None:
    verifier = CountingVerifier()
    authenticator = Authenticator([verifier])
    token = sign({"sub": "alice", "email": "a@example.com", "exp": now() + 60})

    first = _authenticate(authenticator, token)
    second = _authenticate(authenticator, token)

    assert first == second == Principal(id="alice", email="a@example.com")
    assert verifier.calls == 1


def test_the_cache_is_never_used_past_the_tokens_exp() -> None:
    verifier = CountingVerifier()
    clock = [float(now())]
    authenticator = Authenticator([verifier], clock=lambda: clock[0])
    exp = now() + 60
    token = sign({"sub": "alice", "exp": exp})

    _authenticate(authenticator, token)
    clock[0] = exp - 1
    _authenticate(authenticator, token)
    assert verifier.calls == 1
    clock[0] = exp
    _authenticate(authenticator, token)
    assert verifier.calls == 2, "at exp the cached verdict is void and the token is checked again"


def test_refused_tokens_are_not_remembered() -> None:
    verifier = CountingVerifier()
    authenticator = Authenticator([verifier])
    token = sign({"sub": "alice", "exp": now() + 60}, secret="another-secret-that-is-long-enough-0123456789")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            _authenticate(authenticator, token)
    assert verifier.calls == 2


def test_the_cache_is_bounded() -> None:
    verifier = CountingVerifier()
    authenticator = Authenticator([verifier], cache_size=2)
    tokens = [sign({"sub": f"user-{n}", "exp": now() + 60}) for n in range(3)]
    for token in tokens:
        _authenticate(authenticator, token)
    _authenticate(authenticator, tokens[0])
    assert verifier.calls == 4, "the oldest entry made room for the third token"
