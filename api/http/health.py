"""Liveness and readiness, for load balancers and orchestrators: no token needed."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from api.db.database import Database
from api.http.problems import database_unavailable, error_response

router = APIRouter(tags=["health"])

_READY_TIMEOUT_SECONDS = 3.0


async def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable",
    responses={503: error_response("The database is unreachable.")},
)
async def readyz(database: Annotated[Database, Depends(_database)]) -> dict[str, str]:
    try:
        await asyncio.wait_for(database.ping(), _READY_TIMEOUT_SECONDS)
    except TimeoutError:
        raise database_unavailable() from None
    return {"status": "ready"}
