"""The one LISTEN connection of a worker: wake-ups for the live-changes streams (`api.events`).

A write's NOTIFY on channel `task_events` carries a short hash of the user id (`wake_tag`) and
nothing else: the API sends it right after its write's COMMIT (`api.db.statements.WAKE_STREAMS`), and
the trigger that writes task events sends it for any other writer, inside the write's transaction
(sql/migrations/0009_wake_after_commit.sql). The listener hands each payload to `on_wake`. A
notification only says "look again": streams read the events themselves, through the role switch,
so a lost, duplicated or colliding notification costs at most a read, never an event.

LISTEN needs a session that lasts, which a pooler in transaction mode (Neon's pooled URL) does not
give: there the LISTEN succeeds and nothing is ever heard. So `listen_url` picks DATABASE_DIRECT_URL
when it reaches Postgres itself (one that reaches a pooler is not used: `todo-api serve` warns of it
once, at start-up), else DATABASE_URL when it reaches Postgres itself, else nothing (the streams
then poll). When the
connection is lost (a database restart, a dropped network), or LISTEN is refused (a standby, which
`todo-api serve` refuses at start-up, reached after a failover), the listener reconnects with
backoff, and calls `on_lost` both when it notices and once it listens again, so that every stream
catches up from its last id: nothing is missed; until it listens again, the streams poll
(`api.events.hub`). Any other error (a bug, or one psycopg raises as another class) is logged with
its traceback and handled the same way.

A lost connection is a WARNING once, when it is noticed; the failed tries after it are DEBUG, and a
WARNING again once a minute while they go on, with the latest cause: an outage stays visible, and a
cause that changes (the server back but refusing the login) shows within a minute, without a line
per try. Listening again is an INFO line saying how long the listener was out, so the log says when
live changes resumed even for an outage too short for the isolation check to notice.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import psycopg

from api.db.host_lookup import LookupBoundedAsyncConnection
from api.db.pool import answer_within
from api.db.prepared import url_reaches_postgres_itself
from api.db.urls import libpq_url
from api.settings import Settings

CHANNEL = "task_events"
# How long the connection may stay silent before the listener checks that it is still alive.
_IDLE_CHECK_SECONDS = 10.0
_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 5.0
# While the listener cannot reconnect, how often a failed try is a WARNING rather than DEBUG.
_STILL_OUT_EVERY_SECONDS = 60.0

logger = logging.getLogger(__name__)


def wake_tag(user_id: str) -> str:
    """The NOTIFY payload for a user's events, as the API sends it and the trigger computes it (md5,
    first 8 hex digits; tests/db/test_wake_after_commit.py holds the two together)."""
    return hashlib.md5(user_id.encode(), usedforsecurity=False).hexdigest()[:8]


async def listen_url(settings: Settings) -> str | None:
    """Where this worker can LISTEN, or None when only a transaction pooler is configured."""
    if settings.database_direct_url is not None:
        direct = _conninfo(settings.database_direct_url.get_secret_value(), settings, "DATABASE_DIRECT_URL")
        try:
            if await url_reaches_postgres_itself(direct):
                return direct
        except (psycopg.OperationalError, OSError) as error:
            # Not a reason to refuse to serve: the listener keeps trying it, with backoff.
            logger.warning(
                "cannot reach DATABASE_DIRECT_URL yet (%s); the events listener keeps trying", error
            )
            return direct
        # Info, not a warning: `todo-api serve` has warned once already, for every worker.
        logger.info("DATABASE_DIRECT_URL reaches a pooler, not Postgres itself: it is not listened on")
    if settings.database_url is None:
        return None
    url = _conninfo(settings.database_url.get_secret_value(), settings, "DATABASE_URL")
    try:
        return url if await url_reaches_postgres_itself(url) else None
    except (psycopg.OperationalError, OSError) as error:
        # A worker started during an outage (one replacing a worker that died in it) cannot tell
        # Postgres from a pooler, where a LISTEN would never hear a write: its streams poll instead,
        # which misses nothing. Raised, it failed the worker's start, and granian gave up on the server.
        logger.warning("cannot reach DATABASE_URL yet (%s); this worker's event streams poll", error)
        return None


def _conninfo(url: str, settings: Settings, setting: str) -> str:
    return libpq_url(
        url,
        setting,
        connect_timeout=settings.db_connect_timeout_seconds,
        application_name="todo-api-listener",
    )


class Listener:
    def __init__(self, conninfo: str, *, on_wake: Callable[[str], None], on_lost: Callable[[], None]):
        self._conninfo = conninfo
        self._on_wake = on_wake
        self._on_lost = on_lost
        self.listening = asyncio.Event()
        # Since when the listener has been without a connection (time.monotonic()), until it listens
        # again; and when it last said so at WARNING.
        self._out_since: float | None = None
        self._warned_at = 0.0

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            try:
                await self._listen_once()
            except (psycopg.OperationalError, OSError, TimeoutError) as error:
                self._say_lost(error)
                if self.listening.is_set():  # it did listen: the next loss starts from a short wait again
                    backoff = _FIRST_BACKOFF_SECONDS
            except psycopg.errors.ReadOnlySqlTransaction as error:
                # "cannot execute LISTEN during recovery": the URL reaches a standby (a failover left
                # it there). No bug, so no traceback; tried again with backoff until it reaches a primary.
                logger.warning("the events listener cannot LISTEN on a standby (%s); trying again", error)
            except Exception:
                # A bug here, or an error psycopg raises as another class, must not silently end the
                # wake-ups of every stream of this worker: it is handled as a lost connection. The
                # backoff is not reset, so a failure that recurs on every connection is not retried,
                # traceback and all, ten times a second.
                logger.exception("the events listener failed; reconnecting")
            if self._out_since is None:
                self._out_since = time.monotonic()
            self.listening.clear()
            self._on_lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _say_lost(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._out_since is None:
            self._warned_at = now
            logger.warning(
                "the events listener lost its connection (%s); reconnecting, and streams poll meanwhile",
                error,
            )
        elif now - self._warned_at >= _STILL_OUT_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(
                "the events listener still cannot reconnect, %.0f s after it lost its connection (%s)",
                now - self._out_since,
                error,
            )
        else:
            logger.debug("the events listener could not reconnect (%s); trying again", error)

    async def _listen_once(self) -> None:
        connection = await LookupBoundedAsyncConnection.connect(self._conninfo, autocommit=True)
        async with connection:
            await connection.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            if self._out_since is not None:
                logger.info(
                    "the events listener is listening again, %.1f s after it lost its connection",
                    time.monotonic() - self._out_since,
                )
                self._out_since = None
            # Whatever was written while nobody listened is read now.
            self._on_lost()
            while True:
                async for notify in connection.notifies(timeout=_IDLE_CHECK_SECONDS):
                    self._on_wake(notify.payload)
                # Silent for a while: a connection the network dropped without a word fails here,
                # shut at the bound rather than cancelled (which waited 10 s more on a silent server).
                try:
                    async with answer_within(connection, _IDLE_CHECK_SECONDS):
                        await connection.execute("SELECT 1")
                except TimeoutError:
                    # A bare TimeoutError says nothing: the warning read "lost its connection ()".
                    raise TimeoutError(
                        f"the database did not answer a check within {_IDLE_CHECK_SECONDS:g} s"
                    ) from None
