"""What handlers ask for, named for what they give: the database and the calling user."""

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Authenticator, Principal, unauthorized
from api.db import Database
from api.problems import ProblemError

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from Better Auth (or `todo-api token USER_ID` in development).",
)


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def current_principal(
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise unauthorized(
            "Send a token in the Authorization header: `Authorization: Bearer <jwt>`.", token_was_sent=False
        )
    return await authenticator.authenticate(credentials.credentials)


async def user_in_path(
    user_id: Annotated[str, Path(description="The caller's user id: the token's `sub`.")],
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    if user_id != principal.id:
        raise ProblemError(
            403, "forbidden", "Forbidden", "The user id in the path is not the one your token was issued for."
        )
    return principal


DatabaseDep = Annotated[Database, Depends(get_database)]
CurrentUser = Annotated[Principal, Depends(user_in_path)]
