"""Liveness and readiness, for load balancers and orchestrators: no token needed."""

import asyncio

from fastapi import APIRouter, Request

from api.db.database import Database
from api.http.caller import refuse_unless_isolated
from api.http.problems import database_unavailable, error_response

router = APIRouter(tags=["health"])

_READY_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", operation_id="checkLiveness", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="checkReadiness",
    summary="The database is reachable and verified to isolate users",
    responses={
        503: error_response(
            "The database is unreachable, or the last isolation check found something "
            "(type urn:todo-api:problem:isolation-unverified)."
        )
    },
)
async def readyz(request: Request) -> dict[str, str]:
    refuse_unless_isolated(request)
    database: Database = request.app.state.database
    try:
        await asyncio.wait_for(database.ping(), _READY_TIMEOUT_SECONDS)
    except TimeoutError:
        raise database_unavailable() from None
    return {"status": "ready"}
