"""One stream: from its starting id, each of its user's events as a Server-Sent Event, until the token
expires or stops verifying, the client goes, or the worker shuts down.

Every read runs through `Caller.run` (the role switch and app.user_id), so the policies decide
which events a stream sees; between reads the stream holds no database connection and waits for
its hub to wake it (or, with no LISTEN connection, for EVENTS_POLL_MILLISECONDS).

An event's `data` is built with the very model GET answers with (`TaskPublic`), from the task as the
trigger stored it, so an event is the task exactly as GET returns it and follows that model's fields.
"""

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sse_starlette.event import ServerSentEvent

from api.db.errors import UNAVAILABLE, IsolationBreach, UserShareExceeded
from api.db.isolation import IsolationUnverified, IsolationWatch
from api.events import queries
from api.events.hub import Hub, Subscription
from api.http.caller import Caller
from api.settings import POSTGRES_BIGINT_MAX
from api.tasks.models import TaskPublic

logger = logging.getLogger(__name__)

# The longest event id a client may send back: Postgres's bigint.
_MAX_EVENT_ID_DIGITS = len(str(POSTGRES_BIGINT_MAX))
# How long a stream waits before reading again when the database could not answer.
_RETRY_SECONDS = 1.0
# How often a waiting stream reads the wall clock, which its token's expiry is on (`_wait`).
_WALL_CLOCK_SECONDS = 5.0
# Reads that cannot run now, and are tried again: the database is away, the user's share is taken,
# or the last isolation check found something (the stream then reads nothing until one is clean).
_NOT_NOW: tuple[type[Exception], ...] = (*UNAVAILABLE, UserShareExceeded, IsolationUnverified)


_T = TypeVar("_T")


async def _finished_even_if_left(read: Coroutine[Any, Any, _T], isolation: IsolationWatch) -> _T:
    """Shielded: a client that leaves mid-read must not cancel the statement, which would cost the
    pool its connection; the read finishes and the connection goes back. Its outcome is retrieved
    even when nobody awaits it any more: a failure then (the database went away) is the stream's
    end, not a `Task exception was never retrieved` error in the log; but an isolation breach fails
    closed (`IsolationWatch.distrust`) whether or not the client stayed to be told, for it is the
    database's state, not the stream's. Past the 200 Starlette runs no exception handler to do it."""
    reading = asyncio.ensure_future(read)
    reading.add_done_callback(functools.partial(_distrust_on_breach, isolation))
    return await asyncio.shield(reading)


def _distrust_on_breach(isolation: IsolationWatch, done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and isinstance(breach := done.exception(), IsolationBreach):
        isolation.distrust(breach)


class TaskDeleted(BaseModel):
    """The data of a `task.deleted` event."""

    id: int


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream starts: after event `position`; with `reset`, the client must refetch first."""

    position: int
    reset: bool


def resume_point(last_event_id: str | None) -> int | None:
    """The event id a client resumes after: None when it sent none; -1 when what it sent is no id."""
    if last_event_id is None:
        return None
    if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > _MAX_EVENT_ID_DIGITS:
        return -1
    value = int(last_event_id)
    return value if value <= POSTGRES_BIGINT_MAX else -1


async def start(caller: Caller, last_event_id: str | None) -> Start:
    """Without Last-Event-ID, from now; with one the stream may resume from (`queries.start` says
    which: a kept event with nothing after it purged, 0 before any purge, or where the purges
    stopped, and nothing from there older than the retention), right after it; otherwise from now
    after a reset."""
    after = resume_point(last_event_id)
    (row,) = await caller.run(queries.start(caller.user.id, after or 0))
    if after is None:
        return Start(row["newest"], reset=False)
    if row["kept"]:
        return Start(after, reset=False)
    return Start(row["newest"], reset=True)


# Line breaks other than CR and LF, which JSON leaves raw and which end no line in an event stream:
# escaped all the same, since a reader that splits lines as Python's str.splitlines() does (httpx's
# iter_lines) cut an event's JSON at them (the content probe of stop 80). The JSON means the same.
_OTHER_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def server_sent(event: Mapping[str, Any]) -> ServerSentEvent:
    """One stored event as the client receives it.

    A task the model refuses (an event stored before 0015_tasks_the_api_can_render.sql, or written
    by hand) is sent as a reset, with the event's id: the client refetches the list, which shows the
    task as it is now, and resumes after it. Raising here would cut the stream past its 200, and its
    client's every reconnect from before the event, for as long as the event is kept."""
    if event["kind"] == "task.deleted":
        data = TaskDeleted(id=event["task_id"]).model_dump_json()
    else:
        try:
            data = TaskPublic.model_validate(event["task"]).model_dump_json()
        except ValidationError as invalid:
            # Where and why, not the task's content, which is the user's.
            logger.error(
                "event %s cannot be rendered, so its stream sends reset in its place: %s",
                event["id"],
                "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
                    for error in invalid.errors(include_url=False)
                ),
            )
            return _reset(event["id"])
        if not data.isascii():
            data = data.translate(_OTHER_LINE_BREAKS)
    return ServerSentEvent(data=data, event=event["kind"], id=str(event["id"]))


async def events(
    caller: Caller,
    hub: Hub,
    subscription: Subscription,
    begin: Start,
    *,
    expires_at: float,
    still_trusted: Callable[[], Awaitable[bool]],
) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, woken through `subscription`, which the response holding them gives back
    (`api.events.routes._EventStream`).

    Before each read, and before sending what it read, the caller's token is asked again
    (`still_trusted`): a stream outlives the check that admitted it, and ends, rather than read or
    send, once the key that signed its token is withdrawn. The client's reconnection is then refused."""
    position = begin.position
    if begin.reset:
        yield _reset(position)
    else:
        # No event, only the id: a client that reconnects before any event resumes from here.
        yield ServerSentEvent(id=str(position))
    while not hub.closed:
        subscription.woken.clear()
        if not await still_trusted():
            return
        try:
            rows = await _finished_even_if_left(
                caller.run(queries.events_after(caller.user.id, position)), caller.isolation
            )
            missed = rows[0]["missed"]
            if missed:
                # Purged before this stream sent them (it fell behind): the client refetches, as
                # a client resuming from here would be told to, and the stream goes on from now.
                position = (await _finished_even_if_left(start(caller, None), caller.isolation)).position
        except _NOT_NOW:
            if caller.isolation.mismatch is not None:
                # The database is another release's (a rolling upgrade migrated it, or a rollback
                # undid this release's migration): this worker serves it no more, and a balancer
                # takes it out by /readyz, but kept, the stream read nothing for as long as the
                # worker ran (the deploys probe of stop 81: each user's, for minutes). Ended, its
                # client reconnects, through the balancer, to the release that serves, from its
                # Last-Event-ID.
                return
            # The listener wakes every stream once the database is back; until then, and until
            # isolation is verified again, retry.
            await _wait(subscription, _RETRY_SECONDS, ends_at=expires_at)
            continue
        except IsolationBreach:
            # Distrusted already (`_finished_even_if_left`): end the stream. Its client's
            # reconnection is refused (503 isolation-unverified) until a check completes clean, as is
            # every stream's next read.
            return
        # And again before sending what was read: a key withdrawn while the read ran must not see
        # its result sent.
        if not await still_trusted():
            return
        if missed:
            yield _reset(position)
            continue
        batch = [row for row in rows if row["id"] is not None]
        for row in batch:
            yield server_sent(row)
            position = row["id"]
        if len(batch) == queries.BATCH:
            continue
        if time.time() >= expires_at:
            return  # the token has expired: the client reconnects with a fresh one
        poll_seconds = hub.poll_every()
        await _wait(subscription, math.inf if poll_seconds is None else poll_seconds, ends_at=expires_at)


def _reset(position: int) -> ServerSentEvent:
    """Tells the client to refetch the list: events it has not seen are gone."""
    return ServerSentEvent(data="{}", event="reset", id=str(position))


async def _wait(subscription: Subscription, seconds: float, *, ends_at: float) -> None:
    """Until the stream is woken, `seconds` pass, or the wall clock reaches `ends_at` (when its token
    stops being accepted). The wall clock is read again at least every `_WALL_CLOCK_SECONDS`: one
    stepped forward (NTP) past `ends_at` ends the stream then, where a single wait timed on the
    monotonic clock kept it open until that clock caught up (the clock probe: 46 s past a token
    refused on every other route)."""
    loop = asyncio.get_running_loop()
    woken_by = loop.time() + seconds
    while not subscription.woken.is_set():
        left = min(woken_by - loop.time(), ends_at - time.time(), _WALL_CLOCK_SECONDS)
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await subscription.woken.wait()
