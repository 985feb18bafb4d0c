"""The API's description, served by the API itself: the OpenAPI document at /openapi.json, and the
interactive docs that show it, Swagger UI at /docs and ReDoc at /redoc.

Their JavaScript and CSS are fastapi-offline's package data (a maintained package whose releases
carry current builds of Swagger UI and ReDoc), served under /docs/assets, so a page needs no other
host: it works on a machine without internet access, and no visit loads a third party's script.
The pages themselves are FastAPI's own (`get_swagger_ui_html`, `get_redoc_html`). All three are
served here rather than by FastAPI, which sends them with no Cache-Control (api/http/cache_control.py).
"""

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.http.cache_control import THIS_RELEASE_ONLY

OPENAPI_PATH = "/openapi.json"
ASSETS_PATH = "/docs/assets"
_ASSETS = files("fastapi_offline").joinpath("static")

# What StaticFiles would answer and no other answer of the API does (README: no answer carries
# Last-Modified, so the dates are no conditions; Range is ignored).
_IGNORED_REQUEST_HEADERS = frozenset({b"range", b"if-range", b"if-modified-since"})


class DocsAssets(StaticFiles):
    """The docs pages' scripts and styles, answered as the pages are: `no-cache`, since each release
    ships its own under the same names (a Swagger UI bundle kept from the release before would meet
    this release's page), validated by their ETag alone, and whole: without this, StaticFiles sends
    Last-Modified, answers a Range with a 206 (a malformed one with its own 400 in plain text, not
    a problem) and a date with a 304, and offers `Accept-Ranges: bytes`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name not in _IGNORED_REQUEST_HEADERS]
        await super().__call__({**scope, "headers": headers}, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(THIS_RELEASE_ONLY)
        del response.headers["last-modified"]
        # Ranges are ignored (above), so none is offered: a download manager told `bytes` would
        # ask for parts and get the whole file each time.
        del response.headers["accept-ranges"]
        return response


def install_docs(app: FastAPI) -> None:
    """Serve /openapi.json, /docs and /redoc and their assets; the app must be made with
    openapi_url=docs_url=redoc_url=None."""
    app.mount(ASSETS_PATH, DocsAssets(directory=str(_ASSETS)), name="docs-assets")

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi_document(request: Request) -> JSONResponse:
        document = app.openapi()
        # As FastAPI's own route does: served under a path prefix (an ASGI server's root_path), the
        # document names it as a server, so that the docs pages send their requests there.
        root = request.scope.get("root_path", "").rstrip("/")
        servers = document.get("servers", [])
        if root and app.root_path_in_servers and root not in {server.get("url") for server in servers}:
            document = {**document, "servers": [{"url": root}, *servers]}
        return JSONResponse(document, headers=THIS_RELEASE_ONLY)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_PATH}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers.update(THIS_RELEASE_ONLY)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{OPENAPI_PATH}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(THIS_RELEASE_ONLY)
        return page
