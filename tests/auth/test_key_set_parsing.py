"""Which JWKs are used: only asymmetric signing keys whose alg, kty and crv agree, one per kid."""

from typing import Any

import pytest

from api.auth.jwks import parse_key_set
from tests.auth.jwks_server import SigningKey

ED = SigningKey.generate("EdDSA")
EC = SigningKey.generate("ES256")
RSA = SigningKey.generate("RS256")


def _without(jwk: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name not in names}


def test_better_auth_keys_are_used_for_their_own_algorithm() -> None:
    keys = parse_key_set({"keys": [ED.jwk, EC.jwk, RSA.jwk]})
    assert {kid: key.algorithm_name for kid, key in keys.items()} == {
        ED.kid: "EdDSA",
        EC.kid: "ES256",
        RSA.kid: "RS256",
    }


def test_a_curve_implies_the_algorithm_when_alg_is_left_out() -> None:
    keys = parse_key_set({"keys": [_without(ED.jwk, "alg"), _without(EC.jwk, "alg")]})
    assert {key.algorithm_name for key in keys.values()} == {"EdDSA", "ES256"}


@pytest.mark.parametrize(
    ("case", "jwk"),
    [
        ("a shared secret", {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "alg": "HS256", "kid": "hs"}),
        ("oct dressed up as EdDSA", {"kty": "oct", "k": "c2VjcmV0", "alg": "EdDSA", "kid": "hs"}),
        ("an EdDSA alg on an EC key", {**EC.jwk, "alg": "EdDSA"}),
        ("an ES512 alg on a P-256 key", {**EC.jwk, "alg": "ES512"}),
        ("an RS256 alg on an Ed25519 key", {**ED.jwk, "alg": "RS256"}),
        ("alg none", {**ED.jwk, "alg": "none"}),
        ("an RSA key that does not say which algorithm", _without(RSA.jwk, "alg")),
        ("no kid", _without(ED.jwk, "kid")),
        ("an empty kid", {**ED.jwk, "kid": ""}),
        ("an encryption key", {**ED.jwk, "use": "enc"}),
        # RFC 7517, section 4.3: key_ops says what a key is for, and these say it is not for this.
        ("a key for encrypting only", {**ED.jwk, "key_ops": ["encrypt"]}),
        ("a key for signing but not verifying", {**ED.jwk, "key_ops": ["sign"]}),
        ("key_ops that are not a list", {**ED.jwk, "key_ops": "verify"}),
        ("a private key", {**ED.jwk, "d": "AAAA"}),
        ("a broken key", {**ED.jwk, "x": "not base64 at all!"}),
        # RFC 7518, section 3.3: 2048 bits or more; the smallest cryptography will make is 1024.
        ("an RSA key under 2048 bits", SigningKey.generate("RS256", rsa_bits=1024).jwk),
        ("not an object", "EdDSA"),
    ],
)
def test_doubtful_keys_are_left_out(case: str, jwk: Any) -> None:
    assert parse_key_set({"keys": [jwk, EC.jwk]}).keys() == {EC.kid}, case


def test_each_key_left_out_is_named_with_why(caplog: pytest.LogCaptureFixture) -> None:
    """Found with a real Better Auth: an Ed448 and a secp256k1 key, both with a kid, were each logged as
    "a key that is not an asymmetric signing key with a kid", naming neither the key nor what it was."""
    ed448 = {"kty": "OKP", "crv": "Ed448", "x": "AAAA", "kid": "ed448"}
    secp256k1 = {**_without(EC.jwk, "alg"), "crv": "secp256k1", "kid": "k1"}
    for_encryption = {**RSA.jwk, "use": "enc", "kid": "enc"}
    with caplog.at_level("WARNING", logger="api.auth.jwks"):
        keys = parse_key_set({"keys": [ed448, secp256k1, for_encryption, _without(ED.jwk, "kid"), ED.jwk]})
    assert list(keys) == [ED.kid]
    assert [record.getMessage() for record in caplog.records] == [
        "JWKS: skipping key 'ed448', of a kind this API does not verify tokens with (kty 'OKP', crv 'Ed448')",
        "JWKS: skipping key 'k1', of a kind this API does not verify tokens with (kty 'EC', crv 'secp256k1')",
        "JWKS: skipping key 'enc', which is not for signatures (use 'enc')",
        "JWKS: skipping a key without a kid, which no token can name",
    ]


def test_a_key_whose_key_ops_include_verify_is_used() -> None:
    keys = parse_key_set(
        {"keys": [{**ED.jwk, "key_ops": ["verify"]}, {**EC.jwk, "key_ops": ["sign", "verify"]}]}
    )
    assert keys.keys() == {ED.kid, EC.kid}


def test_two_keys_under_one_kid_are_both_left_out() -> None:
    impostor = SigningKey.generate("EdDSA", kid=ED.kid)
    assert parse_key_set({"keys": [ED.jwk, impostor.jwk, EC.jwk]}).keys() == {EC.kid}


def test_one_key_listed_twice_under_its_kid_is_used() -> None:
    """A set merged from two copies lists a key twice: it is one key, not two under one kid (every
    token it signed was refused, the 401 asking whether the token came from another deployment)."""
    written_otherwise = {**_without(ED.jwk, "alg"), "use": "sig"}
    keys = parse_key_set({"keys": [ED.jwk, written_otherwise, EC.jwk]})
    assert keys.keys() == {ED.kid, EC.kid}
    assert keys[ED.kid].algorithm_name == "EdDSA"


@pytest.mark.parametrize("document", [None, [], {}, {"keys": "none"}, {"keys": {"a": 1}}])
def test_a_document_that_is_not_a_key_set_is_refused(document: object) -> None:
    with pytest.raises(ValueError, match="not a JWK set"):
        parse_key_set(document)


@pytest.mark.parametrize(
    ("case", "jwk"),
    [
        ("a curve that is a list", {**_without(ED.jwk, "alg"), "crv": ["Ed25519"]}),
        ("a curve that is an object", {**_without(ED.jwk, "alg"), "crv": {"name": "Ed25519"}}),
        ("a key type that is a list", {**ED.jwk, "kty": ["OKP"]}),
        ("a kid that is a list", {**ED.jwk, "kid": ["a"]}),
        ("an x that is a number", {**ED.jwk, "x": 1}),
    ],
)
def test_a_malformed_key_is_left_out_alone(case: str, jwk: Any) -> None:
    """One key the parser cannot read costs that key, never the set."""
    assert parse_key_set({"keys": [jwk, EC.jwk]}).keys() == {EC.kid}, case
