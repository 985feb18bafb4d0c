"""The one way to change the OpenAPI document FastAPI generates, as its docs' "Extending OpenAPI"
teaches: `app.openapi` replaced once, applying each amendment, in order, to the document FastAPI
generates (and caches) the first time it is asked for."""

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI

OpenApiDocument = dict[str, Any]
Amendment = Callable[[OpenApiDocument], None]


def install_openapi(app: FastAPI, amendments: Sequence[Amendment]) -> None:
    generate = app.openapi  # FastAPI's own, which caches what it makes in app.openapi_schema

    def openapi() -> OpenApiDocument:
        if app.openapi_schema is None:
            document = generate()
            for amend in amendments:
                amend(document)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def document_request_header(name: str, description: str) -> Amendment:
    """A header every operation reads if it is sent, and never refuses (a middleware's, outside the
    routes), documented as an optional parameter of every operation."""
    parameter = {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }

    def amend(document: OpenApiDocument) -> None:
        for operation in (op for path in document["paths"].values() for op in path.values()):
            operation.setdefault("parameters", []).append(parameter)

    return amend


def response_header(description: str, schema_type: str = "string") -> dict[str, Any]:
    """An OpenAPI `headers` entry of a response."""
    return {"description": description, "schema": {"type": schema_type}}


def document_response_header(name: str, description: str) -> Amendment:
    """A header every answer of the API carries, documented as required on every response of every
    operation, except where a response documents it itself: one some of whose answers are the
    server's own (api/http/body_limit.py), which do not."""
    header = {**response_header(description), "required": True}

    def amend(document: OpenApiDocument) -> None:
        for operation in (op for path in document["paths"].values() for op in path.values()):
            for response in operation["responses"].values():
                response.setdefault("headers", {}).setdefault(name, header)

    return amend
