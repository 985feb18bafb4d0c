"""Signing keys like Better Auth's, and a real JWKS endpoint on loopback that serves their public halves."""

import base64
import gzip
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

JWKS_PATH = "/api/auth/jwks"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _generate(algorithm: str, rsa_bits: int) -> tuple[PrivateKey, dict[str, Any]]:
    private: PrivateKey
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        return private, json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    if algorithm in ("ES256", "ES512"):
        private = ec.generate_private_key(ec.SECP256R1() if algorithm == "ES256" else ec.SECP521R1())
        return private, json.loads(ECAlgorithm.to_jwk(private.public_key()))
    private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return private, json.loads(RSAAlgorithm.to_jwk(private.public_key()))


@dataclass(frozen=True)
class SigningKey:
    """A key pair under a kid, published as Better Auth publishes it (alg, crv, kid on the JWK)."""

    algorithm: str
    private: PrivateKey
    jwk: dict[str, Any]

    @classmethod
    def generate(
        cls, algorithm: str = "EdDSA", kid: str | None = None, *, rsa_bits: int = 2048
    ) -> "SigningKey":
        private, jwk = _generate(algorithm, rsa_bits)
        return cls(algorithm, private, {**jwk, "alg": algorithm, "kid": kid or secrets.token_urlsafe(16)})

    @property
    def kid(self) -> str:
        kid: str = self.jwk["kid"]
        return kid

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """Like Better Auth: alg and kid in the header, no typ (unless a test says otherwise)."""
        fields = {name: value for name, value in {"kid": self.kid, **header}.items() if value is not None}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"typ": None, **fields})

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(header: dict[str, Any], claims: dict[str, Any], *, hmac_secret: bytes | None = None) -> str:
    """A token with any header at all, signed by hand with HMAC-SHA256 (or not at all).

    PyJWT rightly refuses to use a public key as an HMAC secret; an attacker does not ask.
    """
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if hmac_secret is None:
        return f"{signing_input}."
    signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class JwksServer:
    """What the tests change: the published keys, whether the endpoint is up, and how often it was asked.

    `document`, when set, is sent instead of the key set, as it is (under `content_encoding`, if set):
    a hostile or broken endpoint. `redirect_to`, when set, is where a 308 sends the client instead.
    `drip_seconds` sends the body's first bytes one a second for that long, as a slow endpoint would.
    `cut_off` counts the bodies the client stopped reading before the end. `compresses_when_asked`
    gzips the body for a client whose Accept-Encoding lists gzip, as a CDN in front of it would;
    `accept_encodings` is what each request asked for (None: no Accept-Encoding).
    """

    base_url: str
    keys: list[SigningKey] = field(default_factory=list)
    jwks_path: str = JWKS_PATH
    down: bool = False
    redirect_to: str | None = None
    document: bytes | None = None
    content_encoding: str | None = None
    drip_seconds: int = 0
    compresses_when_asked: bool = False
    accept_encodings: list[str | None] = field(default_factory=list)
    fetches: int = 0
    cut_off: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def jwks_url(self) -> str:
        return self.base_url + self.jwks_path

    def publish(self, *keys: SigningKey) -> None:
        with self._lock:
            self.keys.extend(keys)

    def fetch_count(self) -> int:
        with self._lock:
            return self.fetches

    def _document(self) -> bytes | None:
        with self._lock:
            self.fetches += 1
            if self.down:
                return None
            if self.document is not None:
                return self.document
            return json.dumps({"keys": [key.jwk for key in self.keys]}).encode()

    def _gzips_for(self, accept_encoding: str | None) -> bool:
        """Whether to gzip the answer to a client that accepts `accept_encoding` (which is recorded)."""
        with self._lock:
            self.accept_encodings.append(accept_encoding)
            accepted = [part.split(";")[0].strip().lower() for part in (accept_encoding or "").split(",")]
            return self.compresses_when_asked and "gzip" in accepted

    def send(self, body: bytes, out: Any) -> None:
        """Write `body` (dripping first if asked), counting a client that hangs up before the end."""
        try:
            for offset in range(min(self.drip_seconds, len(body))):
                if self.stopping.wait(1.0):
                    return
                out.write(body[offset : offset + 1])
                out.flush()
            for offset in range(min(self.drip_seconds, len(body)), len(body), 65536):
                out.write(body[offset : offset + 65536])
        except OSError:
            with self._lock:
                self.cut_off += 1

    def cut_off_count(self) -> int:
        with self._lock:
            return self.cut_off


@contextmanager
def jwks_server(*keys: SigningKey, jwks_path: str = JWKS_PATH) -> Iterator[JwksServer]:
    """A real HTTP server on 127.0.0.1, in a thread, serving the keys at `jwks_path`: where Better
    Auth serves them by default, or under the path its base URL names."""
    state: list[JwksServer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != state[0].jwks_path:
                self.send_error(404)
                return
            if state[0].redirect_to is not None:
                self.send_response(308)
                self.send_header("Location", state[0].redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            gzips = state[0]._gzips_for(self.headers.get("Accept-Encoding"))
            body = state[0]._document()
            if body is None:
                self.send_error(503)
                return
            coding = "gzip" if gzips else state[0].content_encoding
            body = gzip.compress(body) if gzips else body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if coding is not None:
                self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            state[0].send(body, self.wfile)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = JwksServer(
        base_url=f"http://127.0.0.1:{httpd.server_address[1]}", keys=list(keys), jwks_path=jwks_path
    )
    state.append(server)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
