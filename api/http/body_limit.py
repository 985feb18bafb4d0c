"""Limits on request bodies: beyond a size, 413 before they are read in full; slower than a deadline
for the whole body, 408; both with the connection closed. A Content-Length that is not a number is a
400 (RFC 9112, section 6.3), answered here as a problem only where the server passes such a head on:
granian, which `todo-api serve` runs, answers it itself, before the app, with an empty 400 and the
connection closed (tests/test_server_limits.py), as uvicorn's h11 does with a plain-text one; called
as an ASGI app, the API gives the problem (tests/api/test_openapi.py). A Transfer-Encoding other than
chunked alone is refused before anything reads the body (RFC 9112, section 6.1: 501 for a coding we do
not implement, 400 for chunked twice): granian passes `gzip, chunked` and `chunked, chunked` on having
undone chunked once, so the app would read a compressed or still-chunked body as plain JSON.

A task is a few kilobytes of JSON at most; anything far larger is a mistake or an attack, and
reading it would cost memory before validation could refuse it. A body trickling in a byte at a
time holds its request (and its user's in-flight slot, api/http/in_flight.py) for as long as it
lasts: the deadline bounds that, where granian's own timeout covers only the head.

An answer decided from the head (401, 403, 415, 429, 503) goes out while the body may still be on its
way. Closed then, with bytes of the body unread, the connection is reset, and a client still sending
may lose the answer it had not yet read (RFC 9112, section 9.6); one whose pool reuses the connection
as it closes gets "Server disconnected". So the rest is read and thrown away once the answer is sent
(granian sends it as soon as it is whole), within the same limits, and holding no in-flight slot;
read to its end, the connection carries the next request.

A body can also be read after the answer began: an event stream reads on to notice its client leave
(api/events/routes.py), and a GET may carry a body. Past its limits then, no 408 or 413 can be sent;
the request ends as if its client had left, and the server closes the connection, since the answer
never completed. Raised past the 200, the problem was a 500 and a traceback any caller could cause.
"""

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.openapi import OpenApiDocument, response_header
from api.http.problems import (
    ProblemError,
    ProblemType,
    chunked_twice,
    http_problem,
    malformed_content_length,
    payload_too_large,
    problem_content,
    problem_description,
    problem_response,
    request_timeout,
    unsupported_transfer_coding,
)

logger = logging.getLogger(__name__)


def _transfer_coding_problem(headers: Iterable[tuple[bytes, bytes]]) -> ProblemError | None:
    """Why a request's Transfer-Encoding cannot be honoured, if it cannot: anything but chunked alone
    (RFC 9112, section 6.1), over however many header lines it is split."""
    values = [value for name, value in headers if name == b"transfer-encoding"]
    if not values:
        return None
    # RFC 9110, section 5.6.1: an empty list element (`, chunked`) is no coding.
    codings = [coding.strip().lower() for value in values for coding in value.split(b",") if coding.strip()]
    if codings == [b"chunked"]:
        return None
    if codings and set(codings) == {b"chunked"}:
        return chunked_twice()
    return unsupported_transfer_coding()


def _says_more_than(content_length: bytes, limit: int) -> bool:
    """Whether a Content-Length of digits says more than `limit` bytes, told by its digits first:
    Python refuses to read a number of over 4,300 digits (sys.get_int_max_str_digits), leading zeros
    included, and a server may pass such a head on."""
    significant = content_length.lstrip(b"0")
    return len(significant) > len(str(limit)) or int(significant or b"0") > limit


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (refused := _transfer_coding_problem(scope["headers"])) is not None:
            # Before Content-Length, which a Transfer-Encoding overrides (RFC 9112, section 6.3).
            await problem_response(refused)(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await problem_response(malformed_content_length())(scope, receive, send)
            return
        if declared is not None and _says_more_than(declared, self.max_bytes):
            # Answer without reading: the client said how much it would send.
            await problem_response(http_problem(payload_too_large(self.max_bytes)))(scope, receive, send)
            return

        received = 0
        deadline: float | None = None  # set when the app first reads the body
        complete = False  # after the body, receive() waits for a disconnect: no deadline for that
        answered = False  # the answer has begun: a body past its limits can no longer be told so
        cut_off = False  # past its limits after that: the request ends as if its client had left
        chunked = declared is None and b"transfer-encoding" in headers

        def past_limits(problem: StarletteHTTPException) -> Message:
            nonlocal cut_off
            if not answered:
                # FastAPI lets HTTPException through its body parsing; the problem handler renders it.
                raise problem
            logger.info("ended a request whose answer had begun: %s", problem.detail)
            cut_off = True
            return {"type": "http.disconnect"}

        async def receive_within_limits() -> Message:
            nonlocal received, deadline, complete
            if cut_off:
                return {"type": "http.disconnect"}
            if complete:
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return past_limits(request_timeout(self.timeout_seconds))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # A chunked body with no Content-Length: stop as soon as it passes the limit.
                    return past_limits(payload_too_large(self.max_bytes))
                complete = not message.get("more_body", False)
            return message

        async def send_noting_the_answer(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                if chunked and deadline is None:
                    # Where a chunked body ends is known only once it has come, and it may not come
                    # within the limits: this connection cannot be promised to the next request.
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        body_may_come = chunked or (declared is not None and declared != b"0")
        await self.app(scope, receive_within_limits, send_noting_the_answer if body_may_come else send)
        if deadline is None and body_may_come:
            # Answered from the head alone: the body is on its way still.
            await self._discard_body(receive, None if declared is None else int(declared.lstrip(b"0")))

    async def _discard_body(self, receive: Receive, declared: int | None) -> None:
        """Read a body the app did not and throw it away, up to `declared` bytes (a chunked body: to its
        end, within `max_bytes`) and for at most `timeout_seconds`, then let the server close or keep
        the connection. Closed with bytes of the body unread, the connection is reset (RFC 9112,
        section 9.6), and a client still sending may lose the answer it had not yet read; read to its
        end, the connection carries the client's next request."""
        discarded = 0
        # Counted, not waited for: once the answer is out, hyper signals the end of a declared body
        # only when the next request's head arrives.
        until = declared if declared is not None else self.max_bytes + 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                while discarded < until:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    discarded += len(message.get("body", b""))
        except TimeoutError:
            return


def _refusal(
    description: str, problem: ProblemType, *, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    # Said in words, not as a `Connection` header: that one is about the connection, which a proxy or
    # HTTP/2 does not pass on, and any answer to a chunked body left unread carries it (RFC 9110, 7.6.1).
    refusal = {
        "description": problem_description(
            description + " The server closes the connection after this answer.", [problem]
        ),
        "content": problem_content([problem]),
    }
    return {**refusal, "headers": headers} if headers else refusal


# The 400 may be the server's own, which carries no X-Request-ID and no Cache-Control: documented here
# as not always sent, the headers every other answer (or problem) carries as required (api/app.py).
_REQUEST_ID_UNLESS_THE_SERVER_REFUSED = {
    "X-Request-ID": response_header(
        "This request's id, in every log line about it: sent with the API's 400, not with the server's own."
    ),
    "Cache-Control": response_header(
        "`no-store`: a problem is about this request alone. Sent with the API's 400, not the server's own."
    ),
}


def body_limit_responses(*, reads_body: bool) -> dict[str, dict[str, Any]]:
    """The OpenAPI responses `BodyLimits` can give an operation: those it gives from the request head
    (any method and path, before the route is chosen, so before a 401 too), and, for an operation
    that reads a body, those it gives while the body is read."""
    unreadable = (
        ", or a chunked body's framing is malformed or the connection ended before its end"
        if reads_body
        else ""
    )
    responses = {
        "400": _refusal(
            "Where the body ends cannot be known: Content-Length is not a number of bytes, or "
            f"Transfer-Encoding names chunked more than once{unreadable}. Nothing was done. Under "
            "`todo-api serve`, a Content-Length that is not a "
            "number, like any request head the server cannot parse (a control character such as DEL in "
            "a field value, say), is refused by the server itself before the API runs: a 400 with no "
            "body and no X-Request-ID.",
            ProblemType.BAD_REQUEST,
            headers=_REQUEST_ID_UNLESS_THE_SERVER_REFUSED,
        ),
        "413": _refusal(
            "Content-Length is larger than MAX_BODY_BYTES"
            + (", or a chunked body grew past it" if reads_body else "")
            + "; refused before anything else is looked at, the token included. Nothing was done.",
            ProblemType.PAYLOAD_TOO_LARGE,
        ),
        "501": _refusal(
            "Transfer-Encoding names a coding other than chunked (`gzip, chunked`, say): the only one "
            "implemented is chunked, alone. Nothing was done.",
            ProblemType.NOT_IMPLEMENTED,
        ),
    }
    if reads_body:
        responses["408"] = _refusal(
            "The body did not arrive within BODY_TIMEOUT_SECONDS. Nothing was done.",
            ProblemType.REQUEST_TIMEOUT,
        )
    return responses


def document_body_limits(document: OpenApiDocument) -> None:
    """Documents `body_limit_responses` on every operation, since `BodyLimits` sits in front of all
    of them; an operation reads a body exactly when it declares one (FastAPI reads no other)."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        operation["responses"].update(body_limit_responses(reads_body="requestBody" in operation))
