"""The authenticated route, and the caller it hands to handlers as the `CallerDep` dependency.

Who is calling is decided before FastAPI reads the request body: a caller we cannot identify, or
who names another user's path, gets a 401 or 403 and learns nothing about how their body would have
been judged, and a user's slow bodies hold only that user's in-flight slots (`InFlightCap`).
FastAPI reads and parses the body before it solves any dependency (a malformed body is a 422 before
a dependency runs), so a dependency alone cannot keep that promise. `AuthenticatedRoute`, a custom
route class as FastAPI's docs teach ("Custom Request and APIRoute class"), admits the request first
and then runs FastAPI's own request handler for every endpoint; handlers declare `caller: CallerDep`
to receive the caller it admitted. The route class also documents the Bearer scheme and `{user_id}`,
the two things it checks, through FastAPI's `openapi_extra`.
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.openapi.models import HTTPBearer
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from api.auth.errors import InvalidToken
from api.auth.principal import USER_ID_MAX_LENGTH, Principal
from api.auth.verification import VerifiedToken
from api.db.database import Database, Query, Rows
from api.db.isolation import IsolationWatch
from api.db.stored_owners import StoredOwners
from api.http.cache_control import NO_STORE, no_store_header
from api.http.conditional import field_value
from api.http.json_body import Utf8JsonRoute
from api.http.openapi import OpenApiDocument
from api.http.problems import (
    REQUEST_MEDIA_TYPE,
    forbidden,
    unsupported_content_coding,
    unsupported_media_type,
)
from api.http.refusals import AUTH_ERRORS, NOT_JSON, UNAVAILABLE_TO_READS, UNAVAILABLE_TO_WRITES
from api.http.services import Services, services

_BEARER_SCHEME_NAME = "HTTPBearer"
_BEARER_SCHEME = HTTPBearer(
    bearerFormat="JWT",
    description="A JWT from Better Auth (or `todo-api token USER_ID` in development).",
)
_USER_ID_DESCRIPTION = "The caller's user id: the token's `sub`."
_CALLER_DOCS: dict[str, Any] = {
    "security": [{_BEARER_SCHEME_NAME: []}],
    "parameters": [
        {
            "name": "user_id",
            "in": "path",
            "required": True,
            "description": _USER_ID_DESCRIPTION,
            "schema": {
                "type": "string",
                "title": "User Id",
                "description": _USER_ID_DESCRIPTION,
                # What authentication takes as a `sub` (api/auth/principal.py).
                "minLength": 1,
                "maxLength": USER_ID_MAX_LENGTH,
            },
        }
    ],
}


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of this request; every statement it runs runs as that user."""

    user: Principal
    # The bearer token that admitted the request, which an event stream asks again whether it is still
    # trusted (api/events/routes.py); never shown.
    token: str = field(repr=False)
    # When that token expires (its `exp`): an event stream ends then. Not on `user`, which
    # `StoredOwners` compares whole: every new token would then store the row again.
    token_expires_at: float
    database: Database
    stored_owners: StoredOwners
    isolation: IsolationWatch

    async def run(self, query: Query) -> Rows:
        """Run the query as the caller, once the last isolation check is clean (a stream outlives
        the verdict it was admitted under). A write leaves out the upsert of the caller's user row
        once this worker has stored the row as the caller's token describes it (`StoredOwners.run`)."""
        self.isolation.refuse_unless_verified()
        return await self.stored_owners.run(self.database, self.user, query)


# A Better Auth token is about a kilobyte; a larger header is refused before anything decodes it.
MAX_AUTHORIZATION_BYTES = 8 * 1024


def _scheme_and_token(authorization: str) -> tuple[str, str]:
    """An Authorization field's scheme and credentials (RFC 9110, section 11.6.2)."""
    scheme, _, token = authorization.partition(" ")
    return scheme, token.strip()


async def _authorized_caller(request: Request, shared: Services) -> tuple[str, VerifiedToken]:
    """The request's bearer token, and what it vouches for once verified."""
    # Two Authorization fields are two claims of who is calling (a proxy may act on the other one):
    # the request proves nobody.
    given = request.headers.getlist("Authorization")
    if len(given) > 1:
        raise InvalidToken("Send one Authorization header, not several.")
    authorization = given[0] if given else None
    if authorization is not None and len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise InvalidToken(f"The Authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes.")
    scheme, token = _scheme_and_token(authorization or "")
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken(
            "Send a token in the Authorization header: `Authorization: Bearer <jwt>`.", token_was_sent=False
        )
    verified = await shared.authenticator.authenticate(token)
    principal = verified.principal
    # The access line names whom the token proved, whatever is refused next (another's path, the rate).
    request.state.user_id = principal.id
    if request.path_params.get("user_id") != principal.id:
        raise forbidden()
    return token, verified


class AuthenticatedRoute(Utf8JsonRoute):
    """A route whose caller is authenticated and matched to `{user_id}` before FastAPI reads the
    body; its handler then runs as FastAPI runs any handler, with the caller as `CallerDep`.

    Its OpenAPI operation carries the Bearer requirement, the `{user_id}` parameter and the refusals
    admission can answer (`api.http.refusals`; a 429 or 503 the route documents itself is kept);
    `document_bearer_scheme` adds the scheme they refer to.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = kwargs.pop("openapi_extra", None) or {}
        if "security" in extra:
            raise ValueError("AuthenticatedRoute documents the security requirement itself")
        docs = {
            **extra,
            **_CALLER_DOCS,
            "parameters": [*extra.get("parameters", ()), *_CALLER_DOCS["parameters"]],
        }
        methods = {method.upper() for method in kwargs.get("methods") or ()}
        unavailable = UNAVAILABLE_TO_READS if methods <= _READ_ONLY_METHODS else UNAVAILABLE_TO_WRITES
        responses = {**AUTH_ERRORS, **unavailable, **(kwargs.pop("responses", None) or {})}
        if _METHODS_WITH_BODIES & methods:
            for status, response in NOT_JSON.items():
                responses.setdefault(status, response)
        super().__init__(path, endpoint, openapi_extra=docs, responses=responses, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def admit_then_handle(request: Request) -> Response:
            shared = services(request.app)
            # Fail closed: while the last isolation check found anything, no request reaches the database
            # (after one that could not reach it, the first request asks for another at once).
            await shared.isolation.admit()
            token, verified = await _authorized_caller(request, shared)
            user = verified.principal
            request.state.caller = Caller(
                user, token, verified.expires_at, shared.database, shared.stored_owners, shared.isolation
            )
            _refuse_a_body_that_is_not_json(request)
            # Before FastAPI reads the body: a user's slow bodies hold only their own slots.
            in_flight = shared.in_flight
            in_flight.enter(user.id)
            try:
                # After the in-flight cap: a burst it refused (told to retry in a second) spent the
                # user's minute of requests, and the retry met the rate's 429 (RATE_LIMIT_PER_MINUTE).
                if shared.rate_limiter is not None:
                    shared.rate_limiter.take(user.id)
                response = await handle(request)
            except BaseException:
                in_flight.leave(user.id)
                raise
            response.headers.setdefault("Cache-Control", NO_STORE)
            if isinstance(response, EventSourceResponse):
                # A stream lasts as long as its client stays: its own limits bound it
                # (MAX_STREAMS_PER_USER, and a send timeout for each event).
                in_flight.leave(user.id)
                return response
            return _SlotHeldUntilSent(response, lambda: in_flight.leave(user.id))

        return admit_then_handle


class _SlotHeldUntilSent(Response):
    """The handler's response, sent as it is; the user's in-flight slot is given back once it is sent,
    however that ends. An answer its client does not read holds the slot until the client is cut off
    (api/http/slow_readers.py), so one user's unread answers are at most their slots."""

    def __init__(self, response: Response, give_back: Callable[[], None]) -> None:
        self._response, self._give_back = response, give_back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:
            self._give_back()


# What a handler answers is one user's data (or says whether it changed): no cache may keep it, not
# a browser's on a shared computer either (OWASP ASVS 8.2.1). RFC 9111, section 3.5, already keeps a
# shared cache from storing an answer to a request with Authorization, unless the answer allows it.
# A 304 carries it too, as the 200 it stands for would (RFC 9110, section 15.4.5).
_CACHE_CONTROL = no_store_header("the answer is the caller's data, for no cache to keep.")


def document_no_store(document: OpenApiDocument) -> None:
    """Declares Cache-Control on every answer of an `AuthenticatedRoute` handler (a 2xx or a 304),
    where its operation does not describe its own (the event stream's)."""
    for operation in (op for path in document["paths"].values() for op in path.values()):
        if operation.get("security") != _CALLER_DOCS["security"]:
            continue
        for status, response in operation["responses"].items():
            if status.startswith("2") or status == "304":
                response.setdefault("headers", {}).setdefault("Cache-Control", _CACHE_CONTROL)


_METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH"})
# The safe methods (RFC 9110, section 9.2.1): their handlers run every query read-only.
_READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


def _refuse_a_body_that_is_not_json(request: Request) -> None:
    """415 for a body sent as anything but JSON (fetch sends a string body as text/plain), rather
    than a 422 about a dictionary, and for a compressed one: nothing here decodes a content coding,
    and RFC 9110 section 15.5.16 answers an unsupported one with 415. A PATCH that toggles sends no
    body and needs no type."""
    if request.method not in _METHODS_WITH_BODIES:
        return
    headers = request.headers
    # Digits by now (api/http/body_limit.py refuses any other): a body unless all are zeros (`00` too).
    has_body = headers.get("content-length", "0").strip("0") != "" or "transfer-encoding" in headers
    if not has_body:
        return
    # Every line of each field: of two Content-Types a proxy in front may act on the other one, and a
    # list field's lines are one comma-joined value (RFC 9110, section 5.3), `identity` then `gzip` too.
    types = headers.getlist("content-type")
    media_type = types[0].partition(";")[0].strip().lower() if len(types) == 1 else ""
    if media_type != REQUEST_MEDIA_TYPE:
        raise unsupported_media_type()
    codings = field_value(headers, "content-encoding") or ""
    if not {c.strip().lower() for c in codings.split(",")} <= {"", "identity"}:
        raise unsupported_content_coding()


async def admitted_caller(request: Request) -> Caller:
    """The caller `AuthenticatedRoute` admitted for this request. Only its routes may declare it:
    elsewhere no caller was admitted, and the request fails rather than run unauthenticated
    (tests/api/test_routers.py holds every served route to that). (`async`: FastAPI would run a
    plain function in a thread.)"""
    try:
        caller: Caller = request.state.caller
    except AttributeError:
        raise RuntimeError(
            f"The route serving {request.method} {request.url.path} declares CallerDep but is not an "
            "AuthenticatedRoute, which admits the caller CallerDep hands over: give its router "
            "route_class=AuthenticatedRoute"
        ) from None
    return caller


CallerDep = Annotated[Caller, Depends(admitted_caller)]


def document_bearer_scheme(document: OpenApiDocument) -> None:
    """Declares the Bearer scheme that every `AuthenticatedRoute` operation requires."""
    scheme = _BEARER_SCHEME.model_dump(mode="json", by_alias=True, exclude_none=True)
    document.setdefault("components", {}).setdefault("securitySchemes", {})[_BEARER_SCHEME_NAME] = scheme
