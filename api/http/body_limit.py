"""Refuse request bodies beyond a size with 413, before reading them in full.

A task is a few kilobytes of JSON at most; anything far larger is a mistake or an attack, and
reading it would cost memory before validation could refuse it.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.problems import ProblemError, problem_response


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            # Answer without reading: the client said how much it would send.
            error = ProblemError(413, "payload-too-large", "Payload too large", _too_large(self.max_bytes))
            await problem_response(error)(scope, receive, send)
            return

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # A chunked body with no Content-Length: stop as soon as it passes the limit.
                    # FastAPI lets HTTPException through its body parsing; the problem handler renders it.
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, receive_within_limit, send)
