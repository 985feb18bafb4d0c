"""CORS as Starlette's CORSMiddleware does it, except that a refused preflight is a problem.

Starlette answers a preflight it refuses with plain text ("Disallowed CORS origin"). A browser reads no
body of a preflight, allowed or not (the Fetch standard fails it on the status and headers alone), but
an operator trying one with curl does, and every other refusal of the API is a problem that says what
to change. The allowed preflight, and every other request, are Starlette's own answers.
"""

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from api.http.problems import cors_preflight_refused, problem_response

# Starlette's words before the list of what it refused ("origin, method, headers").
_REFUSAL_PREFIX = "Disallowed CORS "


class ProblemCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix(_REFUSAL_PREFIX)
        # Its CORS headers stay: they say what is allowed. The body's own are the problem's.
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        return problem_response(cors_preflight_refused(refused, headers=kept))
