"""What handlers ask for: the caller, bound to the database, and (for health checks) the database.

The caller is established before FastAPI reads the request body (`AuthenticatedRoute`): a caller
we cannot identify, or who names another user's path, gets a 401 or 403 and learns nothing about
how their body would have been judged.

Task handlers ask for exactly one dependency, `CallerDep`: each dependency FastAPI solves costs
microseconds on every request (issue 5: three of them were a fifth of what a `get` costs the API
besides the database).
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from api.auth import Authenticator, Principal, unauthorized
from api.db import Database, Rows
from api.problems import ProblemError
from api.queries import Query


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of this request; every statement it runs runs as that user."""

    user: Principal
    database: Database

    async def run(self, query: Query, *, read_only: bool) -> Rows:
        return await self.database.run(self.user.id, query, read_only=read_only)


async def _authorized_caller(request: Request) -> Principal:
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(
            "Send a token in the Authorization header: `Authorization: Bearer <jwt>`.", token_was_sent=False
        )
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate(token)
    if request.path_params.get("user_id") != principal.id:
        raise ProblemError(
            403, "forbidden", "Forbidden", "The user id in the path is not the one your token was issued for."
        )
    return principal


class AuthenticatedRoute(APIRoute):
    """A route whose caller is authenticated and matched to `{user_id}` before anything else."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def authenticate_then_handle(request: Request) -> Response:
            request.state.caller = Caller(await _authorized_caller(request), request.app.state.database)
            return await handle(request)

        return authenticate_then_handle


class _BearerCaller(SecurityBase):
    """Hands handlers the caller that `AuthenticatedRoute` established.

    Being a `SecurityBase`, it also puts the Bearer scheme (the docs' "Authorize" button) and the
    `{user_id}` path parameter into the OpenAPI document, in the same single dependency.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="JWT",
            description="A JWT from Better Auth (or `todo-api token USER_ID` in development).",
        )
        self.scheme_name = "HTTPBearer"

    async def __call__(
        self,
        request: Request,
        user_id: Annotated[str, Path(description="The caller's user id: the token's `sub`.")],
    ) -> Caller:
        caller: Caller = request.state.caller
        return caller


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


CallerDep = Annotated[Caller, Depends(_BearerCaller())]
DatabaseDep = Annotated[Database, Depends(get_database)]
