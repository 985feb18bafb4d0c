"""`AuthenticatedRoute` admits the caller before FastAPI reads anything, whatever the handler declares.

Every handler runs through FastAPI's own request handler (no handler is chosen for a shortcut by its
signature); the route class only decides first who is calling. A new endpoint that declares query
parameters and a body, as FastAPI's docs teach, is still refused with 401 or 403 before either is
judged, and receives the admitted caller as `CallerDep`.
"""

from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.app import create_app
from api.http.caller import AuthenticatedRoute, CallerDep
from tests.support import new_user, serving_client, settings_for


class Probe(BaseModel):
    word: str


router = APIRouter(prefix="/api/{user_id}/probe", route_class=AuthenticatedRoute)


@router.post("")
async def probe(caller: CallerDep, times: Annotated[int, Query(ge=1)], data: Probe) -> dict[str, str]:
    return {"user": caller.user.id, "echo": data.word * times}


@pytest.fixture(scope="module")
def probe_client(api_db_url: str) -> Iterator[httpx.Client]:
    app = create_app(settings_for(api_db_url))
    app.include_router(router)
    with serving_client(app) as client:
        yield client


def test_the_admitted_caller_reaches_a_handler_with_parameters_and_a_body(probe_client: httpx.Client) -> None:
    alice = new_user()
    response = probe_client.post(
        f"/api/{alice.id}/probe", params={"times": 2}, json={"word": "ab"}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json() == {"user": alice.id, "echo": "abab"}


def test_a_bad_query_and_body_are_judged_only_for_an_admitted_caller(probe_client: httpx.Client) -> None:
    alice, bob = new_user(), new_user()
    json_type = {"Content-Type": "application/json"}

    def send(user_id: str, headers: dict[str, str]) -> httpx.Response:
        # `times` is below its minimum and the body is not even JSON: a 422 either way, if judged.
        return probe_client.post(
            f"/api/{user_id}/probe",
            params={"times": 0},
            content=b'{"word": ',
            headers={**json_type, **headers},
        )

    nobody, elsewhere, admitted = (
        send(alice.id, {}),
        send(bob.id, alice.headers),
        send(alice.id, alice.headers),
    )

    assert [nobody.status_code, elsewhere.status_code, admitted.status_code] == [401, 403, 422]
    assert "errors" not in nobody.json()
    assert "errors" not in elsewhere.json()


def test_a_router_of_authenticated_routes_documents_what_admission_refuses_without_naming_it() -> None:
    app = create_app(settings_for("postgresql://nobody@/nowhere"))
    app.include_router(router)
    operation = app.openapi()["paths"]["/api/{user_id}/probe"]["post"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "403", "415", "422", "429", "503"} <= set(operation["responses"])
    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
