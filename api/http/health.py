"""Liveness and readiness, for load balancers and orchestrators: no token needed."""

from fastapi import APIRouter, Request, Response

from api.http.cache_control import THIS_MOMENT_ONLY, THIS_MOMENT_ONLY_HEADER
from api.http.problems import ProblemType, database_unavailable, error_response, writes_refused
from api.http.refusals import retry_after
from api.http.services import services

router = APIRouter(tags=["health"])

# How long /readyz waits for the isolation check it asks for after the database was away.
READINESS_WAITS_FOR_A_CHECK_SECONDS = 1.0


@router.get(
    "/healthz",
    operation_id="checkLiveness",
    summary="The process is alive",
    responses={200: {"headers": THIS_MOMENT_ONLY_HEADER}},
)
async def healthz(response: Response) -> dict[str, str]:
    response.headers.update(THIS_MOMENT_ONLY)
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="checkReadiness",
    summary="The database is reachable and verified to isolate users",
    responses={
        200: {"headers": THIS_MOMENT_ONLY_HEADER},
        503: error_response(
            "The database did not answer, accepts no writes (a standby, or sessions read-only by "
            "default), or this worker's pool holds no connection and can make none (type "
            f"{ProblemType.DATABASE_UNAVAILABLE.urn}), or the last "
            f"isolation check found something (type {ProblemType.ISOLATION_UNVERIFIED.urn}); ask "
            "again after the `Retry-After` seconds.",
            types=[ProblemType.DATABASE_UNAVAILABLE, ProblemType.ISOLATION_UNVERIFIED],
            headers=retry_after("Seconds to wait before asking again.", required=True),
        ),
    },
)
async def readyz(request: Request, response: Response) -> dict[str, str]:
    shared = services(request.app)
    # Fail closed, as a task request does: not ready while the last isolation check found anything.
    # A health check's own timeout is short (Kubernetes' is 1 s): while the database is away it is
    # told 503 within a second, where a task request waits for the check it asked for as long as for
    # a connection (the verification probe of stop 80 saw /readyz take 5 s).
    await shared.isolation.admit(waiting_at_most=READINESS_WAITS_FOR_A_CHECK_SECONDS)
    if not await shared.readiness.reachable():
        raise writes_refused() if shared.readiness.refuses_writes else database_unavailable()
    response.headers.update(THIS_MOMENT_ONLY)
    return {"status": "ready"}
