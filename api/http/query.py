"""Parameters read strictly: each query parameter once, percent-encoded UTF-8, and numbers as
plain ASCII digits without leading zeros.

A parameter sent twice is refused, not read by one of its values.

FastAPI reads a repeated parameter of a query model by its last value, while a proxy, a cache or a
log in front of the API may read the first: one request, two readings (HTTP parameter pollution).
The OpenAPI document says each parameter is a single value, so a second one is invalid input like
any other: 422, naming the parameter, and nothing is read or changed. So is one whose percent-encoded
bytes are not UTF-8 (`q=%FF`), which Starlette decodes to U+FFFD: a search for a character the
client never sent, and a body not in UTF-8 is refused too. So is one sent with raw bytes that are
not ASCII (curl's `q=Café` as typed, where RFC 3986 asks `q=Caf%C3%A9`): Starlette reads the query
string as Latin-1, so it searched for `CafÃ©`, and its next page's link carried that. Parameters
the model does not know are ignored, repeated or not, in UTF-8 or not, when percent-encoded: raw
bytes that are not UTF-8, in any parameter, are refused by granian before the app runs (README, its
bare 400).
"""

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_plus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

# A whole number as a number's one spelling: ASCII digits, no leading zero.
_WHOLE_NUMBER = re.compile(r"0|[1-9][0-9]*")
# What Starlette's decoding puts where bytes are not UTF-8; a client may also send it on purpose.
_REPLACEMENT = "\ufffd"


def parameter_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The query parameters `model` reads, by the names a request gives them."""
    return tuple(field.alias or name for name, field in model.model_fields.items())


_NOT_UTF8 = "Its percent-encoded bytes are not UTF-8."
_NOT_PERCENT_ENCODED = "Not percent-encoded: send each byte of a character beyond ASCII as %XX (é as %C3%A9)."


def _unclear_encodings(query_string: bytes, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Those of `names` whose value in `query_string` is not percent-encoded UTF-8, each with why."""
    found: dict[str, str] = {}
    for pair in query_string.split(b"&"):
        encoded_name, _, value = pair.partition(b"=")
        name = unquote_plus(encoded_name.decode("latin-1"))  # as Starlette reads it
        if name not in names or name in found:
            continue
        if not value.isascii():
            found[name] = _NOT_PERCENT_ENCODED
            continue
        try:
            # As Starlette decodes (urllib's parse_qsl), but strictly.
            unquote_plus(value.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            found[name] = _NOT_UTF8
    return list(found.items())


def strict_parameters(model: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing any of `model`'s query parameters given more than once, or not given
    as percent-encoded UTF-8."""
    names = parameter_names(model)

    # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
    async def refuse_unclear(request: Request) -> None:
        given = request.query_params
        items = given.multi_items()
        errors = []
        if len(given) != len(items):  # some key appears twice
            errors += [
                {"type": "repeated", "loc": ("query", name), "msg": "Given more than once; give it once."}
                for name in names
                if len(given.getlist(name)) > 1
            ]
        # Only a query string with raw bytes beyond ASCII, or a value holding U+FFFD (what decoding
        # puts for bytes that are not UTF-8), may have been misread: the rest need no second look.
        query_string: bytes = request.scope["query_string"]
        if items and (not query_string.isascii() or any(_REPLACEMENT in value for _, value in items)):
            errors += [
                {"type": "not_utf8", "loc": ("query", name), "msg": why}
                for name, why in _unclear_encodings(query_string, names)
            ]
        if errors:
            raise RequestValidationError(errors)

    return refuse_unclear


def ascii_digits(value: object) -> object:
    """A BeforeValidator for a whole-number parameter: pydantic's int() would also read "4_0", "+1",
    " 1", "1.0" and other scripts' digits, each a second spelling of a number that logs and caches
    would not recognise; so is "07" (task 7 at a second URL), and a limit of a thousand zeros and a
    one made a next page's link the server's own head limit refused."""
    if isinstance(value, str) and not _WHOLE_NUMBER.fullmatch(value):
        raise ValueError("must be a whole number in ASCII digits, without leading zeros")
    return value
