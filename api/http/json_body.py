"""Request bodies are read as JSON in UTF-8, the one encoding RFC 8259 (section 8.1) allows between
systems and the one the API's errors name.

Starlette's `Request.json` gives `json.loads` the body's bytes, and `json.loads` also reads UTF-16 and
UTF-32 (by their byte order mark, or by where the zero bytes fall), so such a body created a task.
`Utf8JsonRoute` hands FastAPI a request whose `json()` decodes UTF-8 alone, the way FastAPI's docs
teach ("Custom Request and APIRoute class"); any other encoding fails to decode and is answered as
any undecodable body is, a 422 naming `body` (`api.http.problems.http_problem`). So is JSON beyond
what the parser reads, arrays nested past the interpreter's recursion limit or a number longer than
int() reads, with a message naming the limit rather than calling it invalid.
"""

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class BeyondParserLimits(Exception):  # noqa: N818 (named for what the caller sent)
    """Valid JSON the parser will not read (RFC 8259, section 9, lets it set limits): the message
    names the limit, for the 422 (`api.http.problems.http_problem`)."""


class Utf8JsonRequest(Request):
    async def json(self) -> Any:
        # "utf-8-sig": a UTF-8 byte order mark is still skipped, as RFC 8259 allows and json.loads did.
        text = (await self.body()).decode("utf-8-sig")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise  # not JSON at all: FastAPI reports where
        except RecursionError as error:
            raise BeyondParserLimits(
                "The body's arrays and objects are nested too deeply to read."
            ) from error
        except ValueError as error:
            # The one other ValueError json.loads raises: an integer longer than int() reads.
            raise BeyondParserLimits(
                f"The body has a number longer than {sys.get_int_max_str_digits()} digits."
            ) from error


class Utf8JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_utf8_json(request: Request) -> Response:
            return await handle(Utf8JsonRequest(request.scope, request.receive))

        return handle_utf8_json
