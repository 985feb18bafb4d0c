"""A path means what was sent: an encoded slash (`%2F`) is data within a segment (RFC 3986, section
2.2), never a separator between two.

ASGI servers decode it into the path Starlette routes on, so `/api/alice/tasks%2F5` reached task 5
and `DELETE /api/alice/tasks%2F5` deleted it: a different URL from the one a proxy, a WAF or a
gateway's per-route rule in front matched (Envoy, for one, keeps an escaped slash as sent). No
resource of the API has a `/` within a segment (a user id holding one is refused at authentication,
task ids are numbers), so such a path names nothing: 404, before any route is chosen.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from api.http.problems import not_found, problem_response

_NAMES_NOTHING = (
    "No resource has this path: an encoded slash (%2F) is data within a segment, not a separator."
)


class EncodedSlashesNameNothing:
    """Answers 404 to a request whose path, as sent, holds `%2F` (or `%2f`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _holds_an_encoded_slash(scope.get("raw_path")):
            await problem_response(not_found(_NAMES_NOTHING))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _holds_an_encoded_slash(raw_path: bytes | None) -> bool:
    # raw_path is the path as sent, without the query (granian and uvicorn alike), whose `q` may hold
    # a %2F of its own. ASGI makes it optional: without it, a decoded slash cannot be told from one sent.
    return raw_path is not None and b"%2" in raw_path and b"%2f" in raw_path.lower()
