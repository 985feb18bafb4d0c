"""The per-worker hub: which streams are open, and waking them when their user's events may have moved.

A stream holds no database connection while it waits: it waits on its subscription's `woken`
event, which the hub sets when the LISTEN connection (`api.db.listener`) hears the stream's user's
tag, when that connection was lost and regained (everyone catches up), and when the worker shuts
down (every stream ends, and a new one is refused with 503). The hub also counts streams: past
MAX_STREAMS_PER_USER of one user on this worker, that user's next one waits a moment for one of
theirs to close, then is refused with 429; past MAX_STREAMS_PER_WORKER of all users, anyone's next
one is refused with 503, so that streams never hold all the connections the worker accepts at once
(api/ops/server.py) and every other request still gets in. A closed stream gives its place back.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from api.db.listener import Listener, listen_url, wake_tag
from api.http.problems import STREAM_REFUSED_CLOSES, streams_unavailable, too_many_requests
from api.settings import Settings
from api.telemetry import metrics

logger = logging.getLogger(__name__)

# How long a refused stream is asked to wait: one heartbeat of another stream closing is typical.
_RETRY_AFTER_SECONDS = 5
# How long a stream of a user who holds all of their places waits for one to be given back before
# its 429. A client that closes a stream and opens another at once (a React effect run twice, a
# reconnect with a fresh token) found its old place still held for the tens of milliseconds the
# server takes to notice the close (tests/test_server_limits.py, `test_a_stream_reopened_the_moment_...`).
# The wait holds one of the user's MAX_REQUESTS_IN_FLIGHT_PER_USER and no database connection.
_PLACE_WAIT_SECONDS = 1.0
# How long a stream refused by a worker that is shutting down is asked to wait: long enough for its
# replacement (or another worker) to take the reconnection.
_SHUTDOWN_RETRY_AFTER_SECONDS = 1


@dataclass(eq=False, slots=True)
class Subscription:
    user_id: str
    tag: str
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(self, *, max_streams_per_user: int, max_streams: int) -> None:
        self._max_streams_per_user = max_streams_per_user
        self._max_streams = max_streams
        # Set when no LISTEN connection can be had (a transaction pooler and no direct URL): how
        # often each stream reads again unprompted.
        self.poll_seconds: float | None = None
        # The LISTEN connection, when there is one, and how often streams read unprompted while it
        # is lost (`poll_every`).
        self._listener: Listener | None = None
        self._poll_while_unheard = 0.0
        self._by_user: dict[str, set[Subscription]] = defaultdict(set)
        self._by_tag: dict[str, set[Subscription]] = defaultdict(set)
        self._open: set[Subscription] = set()
        # Set (and replaced) whenever a place is given back, or the hub closes: `subscribe` waits on it.
        self._place_given_back = asyncio.Event()
        self.closed = False

    def _refuse_unless_room(self, user_id: str) -> None:
        """503 once the worker is shutting down, 429 when `user_id` holds all of their streams already,
        503 when the worker holds all of its; nothing taken either way."""
        if self.closed:
            # Not a 200 that ends at once: a client would reconnect at once, into the same answer.
            raise streams_unavailable(
                "This server is shutting down and opens no new event streams. Try again shortly.",
                retry_after=_SHUTDOWN_RETRY_AFTER_SECONDS,
            )
        if len(self._by_user.get(user_id, ())) >= self._max_streams_per_user:
            # "Process", not "server": each worker counts apart, so a user refused here may hold
            # more streams on the server's other workers than this number.
            raise too_many_requests(
                f"You have {self._max_streams_per_user} event streams open on this server process"
                " already (MAX_STREAMS_PER_USER, counted per process): close one first.",
                retry_after=_RETRY_AFTER_SECONDS,
                headers=STREAM_REFUSED_CLOSES,
            )
        if len(self._open) >= self._max_streams:
            raise streams_unavailable(
                f"This server process holds {self._max_streams} event streams already"
                " (MAX_STREAMS_PER_WORKER, counted per process); "
                "nothing else was refused. Try again shortly.",
                retry_after=_RETRY_AFTER_SECONDS,
            )

    async def subscribe(self, user_id: str) -> Subscription:
        """A place for one more stream of `user_id`, refused as `_refuse_unless_room` says; a user who
        holds all of theirs first waits a moment (`_PLACE_WAIT_SECONDS`) for one to be given back.
        The place is taken as the wait ends, with no await between: of several opens waiting for
        one place, one takes it and the others wait on (tests/api/test_events.py,
        `test_opens_waiting_for_one_place_take_it_in_turn_and_none_is_refused_while_it_comes_back`).

        A refusal leaves nothing behind: the indexes gain an entry only with a stream, or every user
        id refused while the worker is full would be kept for the life of the process."""
        deadline = asyncio.get_running_loop().time() + _PLACE_WAIT_SECONDS
        while not self.closed and self.streams_of(user_id) >= self._max_streams_per_user:
            given_back = self._place_given_back
            try:
                async with asyncio.timeout_at(deadline):
                    await given_back.wait()
            except TimeoutError:
                break
        self._refuse_unless_room(user_id)
        subscription = Subscription(user_id, wake_tag(user_id))
        self._by_user[user_id].add(subscription)
        self._open.add(subscription)
        self._by_tag[subscription.tag].add(subscription)
        metrics.event_streams_open.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._open:
            self._open.remove(subscription)
            metrics.event_streams_open.dec()
        for index, key in ((self._by_user, subscription.user_id), (self._by_tag, subscription.tag)):
            held = index.get(key)
            if held is not None:
                held.discard(subscription)
                if not held:
                    del index[key]
        self._wake_those_waiting_for_a_place()

    def _wake_those_waiting_for_a_place(self) -> None:
        self._place_given_back.set()
        self._place_given_back = asyncio.Event()

    def streams_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def users_with_streams(self) -> int:
        """How many users the hub keeps streams for: one entry each, gone with their last stream, so
        that users refused while the worker is full leave this number as it was."""
        return len(self._by_user)

    def wake(self, tag: str) -> None:
        """Wake the streams whose user's tag this is (others whose tag collides wake for nothing)."""
        for subscription in self._by_tag.get(tag, ()):
            subscription.woken.set()

    def wake_all(self) -> None:
        for streams in self._by_tag.values():
            for subscription in streams:
                subscription.woken.set()

    def poll_every(self) -> float | None:
        """How long a stream waits at most before it reads again unwoken: EVENTS_POLL_MILLISECONDS
        where no LISTEN connection can be had, and while the listener is without its connection
        (DATABASE_DIRECT_URL stopped answering, or has no connection left to give), whose wake-ups
        would otherwise come only at its next try, its backoff and connect timeout apart; None while it
        listens. The listener wakes every stream as it loses and regains its connection, so each
        stream asks again then."""
        if self.poll_seconds is not None:
            return self.poll_seconds
        if self._listener is not None and not self._listener.listening.is_set():
            return self._poll_while_unheard
        return None

    @contextlib.asynccontextmanager
    async def waking(self, settings: Settings) -> AsyncIterator[None]:
        """For the app's lifespan: wake-ups from a LISTEN connection while the app serves (or polling,
        where there can be none); at the end, every stream is closed."""
        url = await listen_url(settings)
        if url is None:
            self.poll_seconds = settings.events_poll_milliseconds / 1000
            # Why is `listen_url`'s to say: a worker started while the database was away has a
            # direct URL all the same, and was told here it had none.
            logger.info(
                "event streams poll every %s ms: this worker has no connection to LISTEN on",
                settings.events_poll_milliseconds,
            )
        listener = None if url is None else Listener(url, on_wake=self.wake, on_lost=self.wake_all)
        self._listener, self._poll_while_unheard = listener, settings.events_poll_milliseconds / 1000
        task = None if listener is None else asyncio.create_task(listener.run(), name="events-listener")
        try:
            yield
        finally:
            self.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def close(self) -> None:
        """Shutting down: no new streams, and every open one ends at its next wake-up, which is now."""
        self.closed = True
        self.wake_all()
        self._wake_those_waiting_for_a_place()
