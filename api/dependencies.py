"""What handlers ask for, named for what they give: the database and the calling user.

The caller is established before FastAPI reads the request body (`AuthenticatedRoute`): a caller
we cannot identify, or who names another user's path, gets a 401 or 403 and learns nothing about
how their body would have been judged.
"""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from api.auth import Authenticator, Principal, unauthorized
from api.db import Database
from api.problems import ProblemError

# Declared on the task routes so that the OpenAPI document has a Bearer scheme (the docs'
# "Authorize" button); AuthenticatedRoute does the checking.
bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from Better Auth (or `todo-api token USER_ID` in development).",
)


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
            request.state.principal = await _authorized_caller(request)
            return await handle(request)

        return authenticate_then_handle


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def current_user(
    request: Request,
    user_id: Annotated[str, Path(description="The caller's user id: the token's `sub`.")],
) -> Principal:
    principal: Principal = request.state.principal
    return principal


DatabaseDep = Annotated[Database, Depends(get_database)]
CurrentUser = Annotated[Principal, Depends(current_user)]
