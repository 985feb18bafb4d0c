"""Cache-Control, the one home of its values: `no-store` for a caller's data (api/http/caller.py),
every problem (api/http/problems.py) and the event stream, each saying why in its OpenAPI
description; and for the answers that are nobody's data: the health checks, the metrics, and the
API's description (the OpenAPI document and the docs pages that show it). Without a Cache-Control, a
proxy or a browser may keep a 200 for as long as its heuristics like (RFC 9111, section 4.2.2)."""

from typing import Any

from api.http.openapi import response_header

NO_STORE = "no-store"


def no_store_header(why: str) -> dict[str, Any]:
    """The OpenAPI description of a required `Cache-Control: no-store`, saying why."""
    return {**response_header(f"`{NO_STORE}`: {why}"), "required": True}


# Liveness, readiness and the metrics are about this moment: a kept /readyz would tell a load balancer
# that an instance is ready after it stopped being, and a kept /metrics would give a scraper old counts.
THIS_MOMENT_ONLY = {"Cache-Control": NO_STORE}
THIS_MOMENT_ONLY_HEADER: dict[str, Any] = {
    "Cache-Control": no_store_header("the answer is about this moment, for no cache to keep.")
}

# The OpenAPI document and its docs pages are the same for everyone but change with each release: a
# cache may keep them only if it asks again before each use (RFC 9111, section 5.2.2.4), so that a
# client reads the contract the server keeps now.
THIS_RELEASE_ONLY = {"Cache-Control": "no-cache"}
