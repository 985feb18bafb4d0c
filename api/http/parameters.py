"""Path and query parameters validated as one pydantic model by the handler rather than by FastAPI.

FastAPI validates each declared parameter on every request, re-deriving its annotation's shape as it
goes: for the list that was over a third of its Python calls (bench/RESULTS.md, "Fourth session";
`python -m bench.request_cpu`). Instead a route documents a model's fields with
`openapi_extra=parameter_docs(Model, "query")`, and its handler validates them in one pydantic call
with `parse_parameters(request, Model, "query")`. A bad value is reported as FastAPI reports it
(field `query.limit`, `path.task_id`), so the one error format holds.

Bodies stay with FastAPI: reading them takes content-type checks and JSON decoding that it already
does well, and the writes that carry them have room to spare against their targets. FastAPI reads
the body before the handler runs, so a request with both a bad body and a bad `{task_id}` is told
about the body first (still a 422 that changes nothing).
"""

from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)
Location = Literal["path", "query"]


def parameter_docs(model: type[BaseModel], location: Location) -> dict[str, Any]:
    """OpenAPI `parameters` documenting each of the model's fields as a parameter in `location`."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        # Parameters cannot add components; keep each field's schema self-contained (a Literal,
        # not an Enum).
        raise ValueError(f"{model.__name__}: a parameter's schema may not refer to other schemas")
    required = set(schema.get("required", ()))
    return {
        "parameters": [
            {
                "name": name,
                "in": location,
                "required": name in required,
                **({"description": field["description"]} if "description" in field else {}),
                "schema": field,
            }
            for name, field in schema["properties"].items()
        ]
    }


def parse_parameters(request: Request, model: type[Model], location: Location) -> Model:
    """The request's parameters in `location` as `model`. As with FastAPI, a repeated query
    parameter counts by its last value, and parameters the model does not name are ignored."""
    received = request.path_params if location == "path" else dict(request.query_params)
    try:
        return model.model_validate(received)
    except ValidationError as error:
        raise RequestValidationError(
            [{**detail, "loc": (location, *detail["loc"])} for detail in error.errors(include_url=False)]
        ) from None
