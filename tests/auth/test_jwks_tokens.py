"""Better Auth's asymmetric tokens: every algorithm it signs with is accepted, and every forgery is a 401."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.auth.conftest import ALGORITHMS, api_trusting, claims_for, user_with
from tests.auth.jwks_server import JwksServer, SigningKey, forge, jwks_server
from tests.support import SECRET, ApiUser, assert_problem, better_auth_id, new_user, now, sign


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_better_auth_algorithm_is_accepted(
    jwks_api: httpx.Client,
    published: JwksServer,
    signing_keys: dict[str, SigningKey],
    user_id: str,
    algorithm: str,
) -> None:
    user = user_with(signing_keys[algorithm].sign(claims_for(published.base_url, user_id)), user_id)

    created = jwks_api.post(user.tasks_url, json={"title": f"Signed with {algorithm}"}, headers=user.headers)
    listed = jwks_api.get(user.tasks_url, headers=user.headers)

    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == user_id
    assert listed.status_code == 200
    assert [task["title"] for task in listed.json()] == [f"Signed with {algorithm}"]


def test_the_shared_secret_still_works_alongside_the_jwks(
    jwks_api: httpx.Client, published: JwksServer
) -> None:
    user = new_user()
    token = sign({"sub": user.id, "exp": now() + 60, "iss": published.base_url, "aud": published.base_url})
    response = jwks_api.get(user.tasks_url, headers=user_with(token, user.id).headers)
    assert response.status_code == 200
    assert response.json() == []


# Each case: (how to make the token, given the key, issuer and user id; what the detail must mention).
TokenMaker = Callable[[SigningKey, str, str], str]
OTHER_KEY = SigningKey.generate("EdDSA")
RSA_KEY = SigningKey.generate("RS256")

BAD_TOKENS: dict[str, tuple[TokenMaker, str]] = {
    "expired": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, iat=now() - 1000, exp=now() - 100)),
        "expired",
    ),
    "not yet valid (nbf)": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, nbf=now() + 600)),
        "not valid yet",
    ),
    "issued in the future (iat)": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, iat=now() + 600)),
        "not valid yet",
    ),
    "wrong iss": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, iss="https://evil.example.com")),
        "(iss)",
    ),
    "no iss": (lambda key, iss, sub: key.sign(claims_for(iss, sub, iss=...)), "'iss'"),
    "wrong aud": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, aud="https://other.example.com")),
        "another audience (aud)",
    ),
    "no aud": (lambda key, iss, sub: key.sign(claims_for(iss, sub, aud=...)), "'aud'"),
    "no sub": (lambda key, iss, sub: key.sign(claims_for(iss, sub, sub=...)), "'sub'"),
    "empty sub": (lambda key, iss, sub: key.sign(claims_for(iss, sub, sub="")), "sub claim"),
    "numeric sub": (lambda key, iss, sub: key.sign(claims_for(iss, sub, sub=42)), "sub claim"),
    "no exp": (lambda key, iss, sub: key.sign(claims_for(iss, sub, exp=...)), "'exp'"),
    # Malformed claims and header parameters: PyJWT's errors for these named none of them.
    "exp not a number": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, exp="later")),
        "exp claim must be a number",
    ),
    "nbf not a number": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, nbf="soon")),
        "nbf claim must be a number",
    ),
    "iat not a number": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, iat="today")),
        "iat claim must be a number",
    ),
    "jti an object": (
        lambda key, iss, sub: key.sign(claims_for(iss, sub, jti={"id": 1})),
        "jti claim must be a string",
    ),
    "kid a number": (
        lambda key, iss, sub: forge({"alg": "EdDSA", "kid": 1}, claims_for(iss, sub)),
        "kid header parameter must be a string",
    ),
    "kid a list": (
        lambda key, iss, sub: forge({"alg": "EdDSA", "kid": [key.kid]}, claims_for(iss, sub)),
        "kid header parameter must be a string",
    ),
    "crit naming an extension": (
        lambda key, iss, sub: forge({"alg": "EdDSA", "kid": key.kid, "crit": ["exp"]}, claims_for(iss, sub)),
        "crit header parameter",
    ),
    "tampered payload": (
        lambda key, iss, sub: _swap_payload(
            key.sign(claims_for(iss, sub)), key.sign(claims_for(iss, "someone"))
        ),
        "signature",
    ),
    "another key with the same kid": (
        lambda key, iss, sub: OTHER_KEY.sign(claims_for(iss, sub), kid=key.kid),
        "signature",
    ),
    "unknown kid": (lambda key, iss, sub: OTHER_KEY.sign(claims_for(iss, sub)), "unknown kid"),
    "no kid": (lambda key, iss, sub: key.sign(claims_for(iss, sub), kid=None), "(kid)"),
    "alg none": (
        lambda key, iss, sub: forge({"alg": "none", "kid": key.kid}, claims_for(iss, sub)),
        "algorithm this API does not accept",
    ),
    "HS256 with the public key's PEM as secret": (
        lambda key, iss, sub: forge(
            {"alg": "HS256", "kid": key.kid}, claims_for(iss, sub), hmac_secret=key.public_pem
        ),
        "signature",
    ),
    "HS256 with the public JWK's x as secret": (
        lambda key, iss, sub: forge(
            {"alg": "HS256", "kid": key.kid}, claims_for(iss, sub), hmac_secret=key.jwk["x"].encode()
        ),
        "signature",
    ),
    "RS256 header on the EdDSA key": (
        lambda key, iss, sub: RSA_KEY.sign(claims_for(iss, sub), kid=key.kid),
        "signed with RS256, but its key is for EdDSA",
    ),
    "EdDSA header, HMAC signature": (
        lambda key, iss, sub: forge(
            {"alg": "EdDSA", "kid": key.kid}, claims_for(iss, sub), hmac_secret=key.public_pem
        ),
        "signature",
    ),
}


def _swap_payload(token: str, other: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{other.split('.')[1]}.{signature}"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_better_auth_tokens_are_401(
    jwks_api: httpx.Client,
    published: JwksServer,
    ed_key: SigningKey,
    user_id: str,
    api_db: Any,
    case: str,
) -> None:
    make, explanation = BAD_TOKENS[case]
    token = make(ed_key, published.base_url, user_id)
    user = user_with(token, user_id)

    response = jwks_api.post(user.tasks_url, json={"title": "Sneaky"}, headers=user.headers)

    problem = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert explanation in problem["detail"]
    assert token not in response.text
    assert api_db.execute("select count(*) from users where id = %s", [user_id]).fetchone() == (0,)


def test_a_key_published_without_alg_is_used_when_its_curve_implies_one_and_named_when_not(
    api_db_url: str, api_db: Any
) -> None:
    """RFC 7517 makes a JWK's alg optional. An Ed25519 key implies EdDSA and is used; an RSA key may be
    for RS256 or PS256 alike, so it is not, and a token naming it is told why, not that its key is
    unknown."""
    ed, rsa = SigningKey.generate("EdDSA"), SigningKey.generate("RS256")
    unstated = [
        replace(key, jwk={name: value for name, value in key.jwk.items() if name != "alg"})
        for key in (ed, rsa)
    ]
    ed_user, rsa_user = better_auth_id(), better_auth_id()
    with jwks_server(*unstated) as server, api_trusting(api_db_url, server) as client:
        signed_ed = user_with(ed.sign(claims_for(server.base_url, ed_user)), ed_user)
        created = client.post(signed_ed.tasks_url, json={"title": "EdDSA"}, headers=signed_ed.headers)
        signed_rsa = user_with(rsa.sign(claims_for(server.base_url, rsa_user)), rsa_user)
        refused = client.post(signed_rsa.tasks_url, json={"title": "RS256"}, headers=signed_rsa.headers)

    assert created.status_code == 201, created.text
    assert (
        "published without the algorithm it is for (alg)"
        in assert_problem(refused, 401, "unauthorized")["detail"]
    )
    assert api_db.execute(
        "select user_id from tasks where user_id in (%s, %s)", [ed_user, rsa_user]
    ).fetchall() == [(ed_user,)]


@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")  # signing with it, on purpose
def test_a_token_signed_by_an_rsa_key_under_2048_bits_is_401_and_the_key_never_used(
    api_db_url: str, api_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 7518 (section 3.3) requires RSA keys of 2048 bits or more: a shorter one can be factored,
    and then anyone can sign for any user. One the auth server publishes is left out, logged, and the
    tokens it signed are refused: they were a 201."""
    weak, strong = SigningKey.generate("RS256", rsa_bits=1024), SigningKey.generate("RS256")
    weak_user, strong_user = better_auth_id(), better_auth_id()
    with jwks_server(weak, strong) as server, api_trusting(api_db_url, server) as client:
        signed_weak = user_with(weak.sign(claims_for(server.base_url, weak_user)), weak_user)
        refused = client.post(signed_weak.tasks_url, json={"title": "weak"}, headers=signed_weak.headers)
        signed_strong = user_with(strong.sign(claims_for(server.base_url, strong_user)), strong_user)
        created = client.post(
            signed_strong.tasks_url, json={"title": "strong"}, headers=signed_strong.headers
        )

    assert_problem(refused, 401, "unauthorized")
    assert created.status_code == 201, created.text
    assert f"skipping key {weak.kid!r}: The RSA key is 1024 bits long" in caplog.text
    assert api_db.execute(
        "select id from users where id in (%s, %s)", [weak_user, strong_user]
    ).fetchall() == [(strong_user,)]


def test_keys_a_token_names_for_itself_are_never_fetched_nor_trusted(
    jwks_api: httpx.Client, published: JwksServer, ed_key: SigningKey, user_id: str, api_db: Any
) -> None:
    """RFC 7515 lets a header carry its own key (jwk, x5c) or a URL to one (jku, x5u): the signer's
    word for whom to trust, which an attacker writes. Only the configured JWKS is trusted: a token
    signed by the attacker's key under a published kid is a 401, and the attacker's URLs are never
    asked for anything (a network position on them would learn nothing, not even that a token came)."""
    attacker = SigningKey.generate("EdDSA")
    with jwks_server(attacker) as elsewhere:
        token = attacker.sign(
            claims_for(published.base_url, user_id),
            kid=ed_key.kid,
            jku=elsewhere.jwks_url,
            x5u=elsewhere.jwks_url,
            jwk={name: value for name, value in attacker.jwk.items() if name != "kid"},
            x5c=["MIIBAA=="],
        )
        user = user_with(token, user_id)
        response = jwks_api.post(user.tasks_url, json={"title": "Sneaky"}, headers=user.headers)
        asked_elsewhere = elsewhere.fetch_count()

    assert "signature" in assert_problem(response, 401, "unauthorized")["detail"]
    assert asked_elsewhere == 0
    assert api_db.execute("select count(*) from users where id = %s", [user_id]).fetchone() == (0,)


def test_a_token_in_the_query_string_is_not_read(
    jwks_api: httpx.Client, published: JwksServer, ed_key: SigningKey, user_id: str
) -> None:
    token = ed_key.sign(claims_for(published.base_url, user_id))
    user = user_with(token, user_id)

    response = jwks_api.get(user.tasks_url, params={"access_token": token, "token": token, "jwt": token})

    problem = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in problem["detail"]
    assert jwks_api.get(user.tasks_url, headers=user.headers).status_code == 200


def test_without_a_jwks_an_eddsa_token_is_refused_not_checked_against_the_secret(
    client: httpx.Client, ed_key: SigningKey, user_id: str
) -> None:
    user = user_with(ed_key.sign({"sub": user_id, "iat": now(), "exp": now() + 60}), user_id)
    response = client.get(user.tasks_url, headers=user.headers)
    problem = assert_problem(response, 401, "unauthorized")
    assert problem["detail"] == "The token is signed with an algorithm this API does not accept."


def test_an_hs256_token_with_a_kid_is_checked_against_the_secret(
    jwks_api: httpx.Client, published: JwksServer, ed_key: SigningKey, alice: ApiUser
) -> None:
    claims = {"sub": alice.id, "exp": now() + 60, "iss": published.base_url, "aud": published.base_url}
    good = sign(claims, secret=SECRET, kid=ed_key.kid)
    bad = sign(claims, secret="some-other-secret-that-is-long-enough-0123", kid=ed_key.kid)
    assert jwks_api.get(alice.tasks_url, headers=user_with(good, alice.id).headers).status_code == 200
    response = jwks_api.get(alice.tasks_url, headers=user_with(bad, alice.id).headers)
    assert "signature" in assert_problem(response, 401, "unauthorized")["detail"]
