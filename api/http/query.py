"""Parameters read strictly: each query parameter once, percent-encoded UTF-8, and numbers as
plain ASCII digits.

A parameter sent twice is refused, not read by one of its values.

FastAPI reads a repeated parameter of a query model by its last value, while a proxy, a cache or a
log in front of the API may read the first: one request, two readings (HTTP parameter pollution).
The OpenAPI document says each parameter is a single value, so a second one is invalid input like
any other: 422, naming the parameter, and nothing is read or changed. So is one whose percent-encoded
bytes are not UTF-8 (`q=%FF`), which Starlette decodes to U+FFFD: a search for a character the
client never sent, and a body not in UTF-8 is refused too. Parameters the model does not know are
ignored, repeated or not, in UTF-8 or not.
"""

from collections.abc import Awaitable, Callable
from urllib.parse import unquote_plus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

# What Starlette's decoding puts where bytes are not UTF-8; a client may also send it on purpose.
_REPLACEMENT = "\ufffd"


def parameter_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The query parameters `model` reads, by the names a request gives them."""
    return tuple(field.alias or name for name, field in model.model_fields.items())


def _not_utf8(query_string: str, names: tuple[str, ...]) -> list[str]:
    """Those of `names` whose percent-encoded value in `query_string` is not UTF-8."""
    found: list[str] = []
    for pair in query_string.split("&"):
        encoded_name, _, value = pair.partition("=")
        name = unquote_plus(encoded_name)
        if name not in names or name in found:
            continue
        try:
            unquote_plus(value, errors="strict")  # as Starlette decodes (urllib's parse_qsl), but strictly
        except UnicodeDecodeError:
            found.append(name)
    return found


def strict_parameters(model: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing any of `model`'s query parameters given more than once, or whose
    percent-encoding is not UTF-8."""
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
        # Only a value holding U+FFFD may have been decoded with replacements: the rest need no second look.
        if items and any(_REPLACEMENT in value for _, value in items):
            errors += [
                {
                    "type": "not_utf8",
                    "loc": ("query", name),
                    "msg": "Its percent-encoded bytes are not UTF-8.",
                }
                for name in _not_utf8(request.scope["query_string"].decode("latin-1"), names)
            ]
        if errors:
            raise RequestValidationError(errors)

    return refuse_unclear


def ascii_digits(value: object) -> object:
    """A BeforeValidator for a whole-number parameter: pydantic's int() would also read "4_0", "+1",
    " 1", "1.0" and other scripts' digits, each a second spelling of a number that logs and caches
    would not recognise."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number in ASCII digits")
    return value
