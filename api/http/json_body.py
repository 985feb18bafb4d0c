"""Request bodies are read as JSON in UTF-8, the one encoding RFC 8259 (section 8.1) allows between
systems and the one the API's errors name.

Starlette's `Request.json` gives `json.loads` the body's bytes, and `json.loads` also reads UTF-16 and
UTF-32 (by their byte order mark, or by where the zero bytes fall), so such a body created a task.
`Utf8JsonRoute` hands FastAPI a request whose `json()` decodes UTF-8 alone, the way FastAPI's docs
teach ("Custom Request and APIRoute class"); any other encoding fails to decode and is answered as
any undecodable body is, a 422 naming `body` (`api.http.problems.http_problem`). So is JSON the
parser will not read, with a message saying why rather than calling it invalid: arrays nested past
the interpreter's recursion limit, a number longer than int() reads, an object that names a
member twice, and `NaN` or `Infinity`, which json.loads reads though JSON has no such value.
"""

# The codec `Utf8JsonRequest.json` decodes with, loaded with the app rather than by a worker's first
# body: a worker out of file descriptors then could not open its module (the limits probe,
# /tmp/s79-limits).
import encodings.utf_8_sig  # noqa: F401
import json
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from fastapi import Request, Response
from fastapi.routing import APIRoute


class UnreadJson(Exception):  # noqa: N818 (named for what the caller sent)
    """Valid JSON the parser will not read: the message says why, for the 422
    (`api.http.problems.http_problem`)."""


# Shown in a 422 at most this long: a member's name is the caller's, and may be as long as the body.
_NAME_SHOWN = 64


def shown_name(name: str, quote: Callable[[str], str] = str) -> str:
    """A member's name as a 422 shows it (an unknown one, or one named twice): cut, "..." after it
    (after the quotes, when quoted) saying so."""
    return quote(name[:_NAME_SHOWN]) + ("..." if len(name) > _NAME_SHOWN else "")


def _members_named_once(members: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refused when one name comes twice. RFC 8259, section 4, leaves what such
    an object means to each parser: json.loads kept the last value, where a proxy or a WAF in front
    may have read the first, so what was checked need not be what is stored (repeated query
    parameters are refused for the same reason, api/http/query.py)."""
    read = dict(members)
    if len(read) < len(members):
        twice = next(name for name, count in Counter(name for name, _ in members).items() if count > 1)
        raise UnreadJson(f"The body names the member {shown_name(twice, json.dumps)} more than once.")
    return read


def _no_constants_json_lacks(constant: str) -> NoReturn:
    """`NaN`, `Infinity` and `-Infinity`: json.loads reads them as floats, but RFC 8259 (section 6)
    has no such numbers, and they were refused as a field's wrong type ("Input should be a valid
    boolean") rather than as what JSON is not (the content probe of stop 80)."""
    raise UnreadJson(f"The body has {constant}, which is not a JSON value.")


class Utf8JsonRequest(Request):
    async def json(self) -> Any:
        # "utf-8-sig": a UTF-8 byte order mark is still skipped, as RFC 8259 allows and json.loads did.
        text = (await self.body()).decode("utf-8-sig")
        try:
            return json.loads(
                text, object_pairs_hook=_members_named_once, parse_constant=_no_constants_json_lacks
            )
        except json.JSONDecodeError:
            raise  # not JSON at all: FastAPI reports where
        # RFC 8259, section 9, lets a parser set limits: the message names the one passed.
        except RecursionError as error:
            raise UnreadJson("The body's arrays and objects are nested too deeply to read.") from error
        except ValueError as error:
            # The one other ValueError json.loads raises: an integer longer than int() reads.
            raise UnreadJson(
                f"The body has a number longer than {sys.get_int_max_str_digits()} digits."
            ) from error


class Utf8JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_utf8_json(request: Request) -> Response:
            return await handle(Utf8JsonRequest(request.scope, request.receive))

        return handle_utf8_json
