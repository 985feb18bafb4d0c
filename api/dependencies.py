"""What handlers ask for, named for what they give: the database and the calling user."""

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Authenticator, Principal, unauthorized
from api.problems import ProblemError

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from Better Auth (or `todo-api token USER_ID` in development).",
)


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


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
    return authenticator.authenticate(credentials.credentials)


async def user_in_path(
    user_id: Annotated[str, Path(description="The caller's user id: the token's `sub`.")],
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    if user_id != principal.id:
        raise ProblemError(
            403, "forbidden", "Forbidden", "The user id in the path is not the one your token was issued for."
        )
    return principal


DatabaseDep = Annotated[AsyncEngine, Depends(get_engine)]
CurrentUser = Annotated[Principal, Depends(user_in_path)]
