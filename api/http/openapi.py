"""The one way to change the OpenAPI document FastAPI generates."""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

OpenApiDocument = dict[str, Any]


def amend_openapi(app: FastAPI, amend: Callable[[OpenApiDocument], None]) -> None:
    """Applies `amend` to the document when FastAPI first generates it (it is cached after that)."""
    generate = app.openapi

    def openapi() -> OpenApiDocument:
        if app.openapi_schema is None:
            amend(generate())
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def document_request_header(app: FastAPI, name: str, description: str) -> None:
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

    amend_openapi(app, amend)


def response_header(description: str, schema_type: str = "string") -> dict[str, Any]:
    """An OpenAPI `headers` entry of a response."""
    return {"description": description, "schema": {"type": schema_type}}


def document_response_header(app: FastAPI, name: str, description: str) -> None:
    """A header every answer of the API carries, documented as required on every response of every
    operation, except where a response documents it itself: one some of whose answers are the
    server's own (api/http/body_limit.py), which do not."""
    header = {**response_header(description), "required": True}

    def amend(document: OpenApiDocument) -> None:
        for operation in (op for path in document["paths"].values() for op in path.values()):
            for response in operation["responses"].values():
                response.setdefault("headers", {}).setdefault(name, header)

    amend_openapi(app, amend)
