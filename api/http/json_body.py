"""Request bodies are read as JSON in UTF-8, the one encoding RFC 8259 (section 8.1) allows between
systems and the one the API's errors name.

Starlette's `Request.json` gives `json.loads` the body's bytes, and `json.loads` also reads UTF-16 and
UTF-32 (by their byte order mark, or by where the zero bytes fall), so such a body created a task.
`Utf8JsonRoute` hands FastAPI a request whose `json()` decodes UTF-8 alone, the way FastAPI's docs
teach ("Custom Request and APIRoute class"); any other encoding fails to decode and is answered as
any undecodable body is, a 422 naming `body` (`api.http.problems.http_problem`).
"""

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class Utf8JsonRequest(Request):
    async def json(self) -> Any:
        # "utf-8-sig": a UTF-8 byte order mark is still skipped, as RFC 8259 allows and json.loads did.
        return json.loads((await self.body()).decode("utf-8-sig"))


class Utf8JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_utf8_json(request: Request) -> Response:
            return await handle(Utf8JsonRequest(request.scope, request.receive))

        return handle_utf8_json
