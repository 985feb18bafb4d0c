"""Query parameters validated as one pydantic model by the handler rather than by FastAPI.

FastAPI validates a query model (`Annotated[Model, Query()]`) field by field on every request,
re-deriving each field's annotation shape as it goes: for the list's six parameters, 440 of a
list's 1,158 Python calls (issue 5). Instead the route documents the model with
`openapi_extra=query_docs(Model)`, and the handler validates it with `parse_query(request, Model)`
in one pydantic call. A bad value is reported as FastAPI would report it (field `query.limit`), so
the one error format is unchanged.
"""

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def query_docs(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `parameters` documenting each of the model's fields as a query parameter."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        # Parameters cannot add components; keep each field's schema self-contained (a Literal,
        # not an Enum).
        raise ValueError(f"{model.__name__}: a query parameter's schema may not refer to others")
    required = set(schema.get("required", ()))
    return {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": name in required,
                **({"description": field["description"]} if "description" in field else {}),
                "schema": field,
            }
            for name, field in schema["properties"].items()
        ]
    }


def parse_query(request: Request, model: type[Model]) -> Model:
    """The request's query parameters as `model`; a repeated parameter counts by its last value,
    and parameters the model does not name are ignored, as FastAPI does."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as error:
        raise RequestValidationError(
            [{**detail, "loc": ("query", *detail["loc"])} for detail in error.errors(include_url=False)]
        ) from None
