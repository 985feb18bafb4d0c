"""Live changes under load: 1,000 open event streams on one API worker.

    .venv/bin/python -m bench.events --streams 1000 --writes 200 --duration 5

Measures, on the `small` dataset with one worker (`todo-api serve --workers 1`):

1. the task scenarios (wrk, as `bench.run` drives them, over the same users) with no stream open;
2. the worker's resident memory before and after opening `--streams` streams (one per user, each
   idle), and the database sessions the API holds meanwhile (an idle stream holds none);
3. in the first round, `--writes` creates, one at a time, each by a user whose stream is open: the
   time from the create's response to its event on that user's stream (p50, p99);
4. the same task scenarios again with every stream open (their users' writes wake them);

1, 2 and 4 alternate for `--rounds` rounds; the table gives the medians.

The streams are read by httpx-sse in a thread of their own, with an event loop of their own.
"""

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from httpx_sse import aconnect_sse

from api.auth.dev_tokens import mint_token
from bench import dataset
from bench.api_server import RunningApi, running_api
from bench.postgres import embedded_postgres_server
from bench.run import new_run_dir, prepare
from bench.scenarios import SCENARIOS
from bench.wrk import ensure_wrk, run_wrk

_TOKEN_TTL_SECONDS = 3600
_EVENT_TIMEOUT_SECONDS = 10.0


@dataclass
class OpenStreams:
    """`count` streams, one per user, held open by a thread of their own; arrival times by task id."""

    base_url: str
    tokens: dict[str, str]
    arrivals: dict[int, float] = field(default_factory=dict)
    opened: int = 0
    failed: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    async def _one(self, client: httpx.AsyncClient, user_id: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with aconnect_sse(client, "GET", f"/api/{user_id}/events", headers=headers) as source:
                if source.response.status_code != 200:
                    self.failed.append(f"{user_id}: {source.response.status_code}")
                    return
                self.opened += 1
                if self.opened == len(self.tokens):
                    self._ready.set()
                async for event in source.aiter_sse():
                    if event.event == "task.created":
                        self.arrivals[int(event.json()["id"])] = time.perf_counter()
        except httpx.HTTPError as error:
            self.failed.append(f"{user_id}: {error!r}")

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=httpx.Timeout(30.0, read=60.0)
        ) as client:
            streams = [
                asyncio.create_task(self._one(client, user_id, token))
                for user_id, token in self.tokens.items()
            ]
            await self._stop.wait()
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)

    @contextmanager
    def held(self) -> Iterator["OpenStreams"]:
        thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="streams", daemon=True)
        thread.start()
        try:
            if not self._ready.wait(120):
                raise RuntimeError(f"only {self.opened} streams opened; failures: {self.failed[:5]}")
            yield self
        finally:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(timeout=30)


def _worker_rss_mib(api: RunningApi) -> float:
    return sum(process.memory_info().rss for process in api.worker_processes()) / (1024 * 1024)


def _api_sessions(superuser_url: str, dbname: str) -> int:
    with psycopg.connect(superuser_url) as connection:
        row = connection.execute(
            "select count(*) from pg_stat_activity where datname = %s and application_name like 'todo-api%%'",
            [dbname],
        ).fetchone()
    return int(row[0]) if row else 0


def _scenarios(
    wrk: str,
    api: RunningApi,
    users_file: Path,
    names: list[str],
    args: argparse.Namespace,
    superuser_url: str,
    size: dataset.Size,
) -> dict[str, float]:
    rates = {}
    for name in names:
        dataset.restore(superuser_url, size)
        result = run_wrk(
            wrk,
            api.base_url,
            SCENARIOS[name],
            users_file,
            connections=args.connections,
            threads=2,
            duration=args.duration,
        )
        rates[name] = result.requests_per_second
        print(
            f"bench.events: {name}: {result.requests_per_second:,.0f} req/s ({result.non_2xx} non-2xx)",
            flush=True,
        )
    return rates


def _latencies(base_url: str, streams: OpenStreams, writes: int) -> list[float]:
    """Milliseconds from each create's response to its event on the writer's stream."""
    users = list(streams.tokens.items())
    seconds = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for k in range(writes):
            user_id, token = users[(k * 7) % len(users)]
            response = client.post(
                f"/api/{user_id}/tasks",
                json={"title": f"live {k}"},
                headers={"Authorization": f"Bearer {token}"},
            )
            answered = time.perf_counter()
            task_id = response.json()["id"]
            deadline = answered + _EVENT_TIMEOUT_SECONDS
            while task_id not in streams.arrivals:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no event for task {task_id} within {_EVENT_TIMEOUT_SECONDS} s")
                time.sleep(0.0002)
            seconds.append(streams.arrivals[task_id] - answered)
    return [value * 1000 for value in seconds]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="open streams, one per user (default 1000)")
    parser.add_argument("--writes", type=int, default=200, help="creates whose event latency is measured")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk scenario (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides, alternating (default 3)")
    parser.add_argument(
        "--scenarios", default="get,create,update,mixed", help="wrk scenarios, comma-separated"
    )
    args = parser.parse_args(argv)
    names = [name for name in args.scenarios.split(",") if name]

    size = dataset.SIZES["small"]
    run_dir = new_run_dir()
    wrk = ensure_wrk()
    with embedded_postgres_server() as postgres:
        prepared = prepare(postgres, size, run_dir, args.streams, {})
        superuser_url = postgres.superuser_url(prepared.dbname)
        tokens = {
            dataset.user_id(n): mint_token(
                prepared.secret,
                dataset.user_id(n),
                email=dataset.user_email(n),
                name=dataset.user_name(n),
                ttl_seconds=_TOKEN_TTL_SECONDS,
            )
            for n in prepared.sample.user_numbers()
        }
        extra = {"RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "WARNING"}
        with running_api(prepared.url, prepared.secret, workers=1, run_dir=run_dir, extra_env=extra) as api:
            run_wrk(
                wrk,
                api.base_url,
                SCENARIOS["list"],
                prepared.users_file,
                connections=args.connections,
                threads=2,
                duration=2,
            )
            # The two sides alternate in rounds, so both see the same neighbours; each figure is the
            # median of its rounds.
            without: dict[str, list[float]] = {name: [] for name in names}
            with_streams: dict[str, list[float]] = {name: [] for name in names}
            latencies: list[float] = []
            for round_number in range(args.rounds):
                for name, rate in _scenarios(
                    wrk, api, prepared.users_file, names, args, superuser_url, size
                ).items():
                    without[name].append(rate)
                dataset.restore(superuser_url, size)
                time.sleep(1)
                # Memory and latency in the first round only: the worker keeps the memory that later
                # rounds free again, so their "before" would include the previous round's streams.
                if round_number == 0:
                    rss_before = _worker_rss_mib(api)
                    sessions_before = _api_sessions(superuser_url, prepared.dbname)
                with OpenStreams(api.base_url, tokens).held() as streams:
                    time.sleep(3)
                    if round_number == 0:
                        rss_after = _worker_rss_mib(api)
                        sessions_after = _api_sessions(superuser_url, prepared.dbname)
                        latencies = _latencies(api.base_url, streams, args.writes)
                    rates = _scenarios(wrk, api, prepared.users_file, names, args, superuser_url, size)
                    for name, rate in rates.items():
                        with_streams[name].append(rate)
                    failed = list(streams.failed)

    per_stream_kib = (rss_after - rss_before) * 1024 / len(tokens)
    lines = [
        f"- {len(tokens):,} streams open on one worker: RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB"
        f" after = {per_stream_kib:.1f} KiB per idle stream; the API's database sessions {sessions_before}"
        f" before, {sessions_after} with the streams open",
        f"- write response to its event on the writer's stream, {len(latencies)} creates one at a time:"
        f" p50 {statistics.median(latencies):.2f} ms, p99 {_percentile(latencies, 0.99):.2f} ms"
        f" (max {max(latencies):.2f} ms)",
        "",
        "| scenario | req/s, no stream | req/s, streams open | change |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {plain:,.0f} | {streamed:,.0f} | {100 * (streamed / plain - 1):+.0f}% |"
            for name in names
            for plain, streamed in [(statistics.median(without[name]), statistics.median(with_streams[name]))]
        ),
    ]
    if failed:
        lines.append(f"- streams that failed: {len(failed)}, e.g. {failed[:3]}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
