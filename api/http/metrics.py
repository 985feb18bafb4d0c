"""GET /metrics: Prometheus's text format, for the scraper. No token: expose it to the scraper only."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.http.cache_control import THIS_MOMENT_ONLY
from api.telemetry.metrics import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST, headers=THIS_MOMENT_ONLY)
