"""Parameters read strictly: each query parameter once, and numbers as plain ASCII digits.

A parameter sent twice is refused, not read by one of its values.

FastAPI reads a repeated parameter of a query model by its last value, while a proxy, a cache or a
log in front of the API may read the first: one request, two readings (HTTP parameter pollution).
The OpenAPI document says each parameter is a single value, so a second one is invalid input like
any other: 422, naming the parameter, and nothing is read or changed. Parameters the model does not
know are ignored, repeated or not.
"""

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel


def parameter_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The query parameters `model` reads, by the names a request gives them."""
    return tuple(field.alias or name for name, field in model.model_fields.items())


def each_parameter_once(model: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing any of `model`'s query parameters given more than once."""
    names = parameter_names(model)

    # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
    async def refuse_repeated(request: Request) -> None:
        given = request.query_params
        if len(given) == len(given.multi_items()):
            return  # no key at all appears twice
        repeated = [name for name in names if len(given.getlist(name)) > 1]
        if repeated:
            raise RequestValidationError(
                [
                    {"type": "repeated", "loc": ("query", name), "msg": "Given more than once; give it once."}
                    for name in repeated
                ]
            )

    return refuse_repeated


def ascii_digits(value: object) -> object:
    """A BeforeValidator for a whole-number parameter: pydantic's int() would also read "4_0", "+1",
    " 1", "1.0" and other scripts' digits, each a second spelling of a number that logs and caches
    would not recognise."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number in ASCII digits")
    return value
