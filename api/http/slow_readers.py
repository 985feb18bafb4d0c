"""Answers a client takes slowly or not at all: a large body goes out in pieces, each of which the
client has SEND_TIMEOUT_SECONDS to take, or it is cut off.

granian (2.8) takes a body handed to it in one message whole, however large, and keeps all of it
until the client has read its last byte, with no write timeout: a client that stopped reading (a
phone gone to sleep, or one that asks and never reads) held each answer whole for as long as it
stayed connected, and one user asking for their longest lists and reading none grew a worker by
3 MB an answer, past 2.5 GB, within every per-user limit. In pieces, granian awaits room for each
before it takes the next, so a stalled answer holds the body and what granian and the kernel buffer
(about 0.4 MB a connection in granian, measured), and only until its client has taken no piece for
SEND_TIMEOUT_SECONDS: then the rest is dropped. granian does not close the connection while its
write waits (the slow readers' probe of stop 85): the kernel does, once the client has taken nothing
for ten times as long, as each worker asks it to (api/ops/worker.py). Until then the answer holds its
user's in-flight slot (api/http/caller.py), so one user's unread answers are at most
MAX_REQUESTS_IN_FLIGHT_PER_USER.

A body of one piece or less is handed over as it is: whatever the server buffers of it is that
small. A streamed body (an event stream: each message says more is to come) is the app's to time,
as sse-starlette does for each event (api/events/routes.py).
"""

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# Large enough that an ordinary answer (a page of a hundred plain tasks) is one piece, as before.
PIECE_BYTES = 64 * 1024


class SlowReaders:
    def __init__(self, app: ASGIApp, *, timeout_seconds: float) -> None:
        self.app = app
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_in_pieces(message: Message) -> None:
            body: bytes = message.get("body", b"")
            if (
                message["type"] != "http.response.body"
                or message.get("more_body")
                or len(body) <= PIECE_BYTES
            ):
                await send(message)
                return
            for start in range(0, len(body), PIECE_BYTES):
                end = start + PIECE_BYTES
                try:
                    async with asyncio.timeout(self.timeout_seconds):
                        await send(
                            {
                                "type": "http.response.body",
                                "body": body[start:end],
                                "more_body": end < len(body),
                            }
                        )
                except TimeoutError:
                    # Not raised on: the request was answered as far as the app goes, and the server
                    # closes a response it never saw completed.
                    logger.info(
                        "cut off a client that took none of its answer for %.0f s (%d of %d bytes sent)",
                        self.timeout_seconds,
                        start,
                        len(body),
                    )
                    return

        await self.app(scope, receive, send_in_pieces)
