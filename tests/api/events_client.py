"""A stream of GET /api/{user_id}/events as a test reads it: httpx-sse over an async httpx client."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.support import TLS, ApiUser, assert_problem

# Long enough for a write to reach a stream that polls (EVENTS_POLL_MILLISECONDS behind PgBouncer).
EVENT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Event:
    kind: str
    id: str
    data: Any


class Stream:
    def __init__(self, response: httpx.Response, events: AsyncIterator[ServerSentEvent]) -> None:
        self.response = response
        self._events = events
        self.last_id = ""

    async def _next_block(self) -> ServerSentEvent:
        return await asyncio.wait_for(anext(self._events), EVENT_TIMEOUT_SECONDS)

    async def opening_id(self) -> str:
        """The bare `id:` the stream opens with (where it starts)."""
        block = await self._next_block()
        assert (block.event, block.data) == ("message", ""), block
        self.last_id = block.id
        return block.id

    async def next(self) -> Event:
        """The next event with data. httpx-sse also hands over the blank line after each heartbeat
        comment as an empty message, which is no event: skipped."""
        while True:
            block = await self._next_block()
            self.last_id = block.id
            if block.data:
                return Event(block.event, block.id, json.loads(block.data))

    async def end(self) -> list[ServerSentEvent]:
        """Whatever the stream still sends before the server ends it (within the timeout)."""
        rest = []
        async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
            async for block in self._events:
                rest.append(block)
        return rest

    async def take(self, count: int) -> list[Event]:
        return [await self.next() for _ in range(count)]

    def refusal(self, status: int, problem: str) -> dict[str, Any]:
        """The problem document of a stream refused with `status` and type `problem`, which says when
        to try again (`Retry-After`), and closes the connection, so that the retry may reach a worker
        with room rather than the same one again."""
        document = assert_problem(self.response, status, problem)
        assert int(self.response.headers["Retry-After"]) > 0
        assert self.response.headers["Connection"] == "close"
        return document


@asynccontextmanager
async def opened(
    client: httpx.AsyncClient,
    user: ApiUser,
    last_event_id: str | None = None,
    *,
    last_event_id_in_query: str | None = None,
) -> AsyncIterator[Stream]:
    """A stream of `user`'s, resumed after `last_event_id` (the header) and `last_event_id_in_query`
    (the `lastEventId` query parameter an EventSource polyfill sends) when given."""
    headers = dict(user.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {} if last_event_id_in_query is None else {"lastEventId": last_event_id_in_query}
    async with aconnect_sse(
        client, "GET", f"/api/{user.id}/events", headers=headers, params=params
    ) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
        yield Stream(response, source.aiter_sse())


@asynccontextmanager
async def async_client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30, verify=TLS) as client:
        yield client
