"""Cache-Control of the answers that are nobody's data: the health checks, the metrics, and the API's
description (the OpenAPI document and the docs pages that show it). A caller's data and every problem
say `no-store` already (api/http/caller.py, api/http/problems.py); without a Cache-Control, a proxy or
a browser may keep a 200 for as long as its heuristics like (RFC 9111, section 4.2.2)."""

from typing import Any

from api.http.openapi import response_header

# Liveness, readiness and the metrics are about this moment: a kept /readyz would tell a load balancer
# that an instance is ready after it stopped being, and a kept /metrics would give a scraper old counts.
THIS_MOMENT_ONLY = {"Cache-Control": "no-store"}
THIS_MOMENT_ONLY_HEADER: dict[str, Any] = {
    "Cache-Control": {
        **response_header("`no-store`: the answer is about this moment, for no cache to keep."),
        "required": True,
    }
}

# The OpenAPI document and its docs pages are the same for everyone but change with each release: a
# cache may keep them only if it asks again before each use (RFC 9111, section 5.2.2.4), so that a
# client reads the contract the server keeps now.
THIS_RELEASE_ONLY = {"Cache-Control": "no-cache"}
