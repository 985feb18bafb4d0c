"""The app serves every router the package defines: a router left out of `api.app.ROUTERS` would
answer 404 on all its routes, silently. And a route hands a handler the caller (`CallerDep`) exactly
when it is an `AuthenticatedRoute`, the class that admits one: declared anywhere else it is a 500
and no security in the document."""

import asyncio
import importlib
import pkgutil

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

import api
from api.app import ROUTERS, create_app
from api.http.caller import AuthenticatedRoute, CallerDep, admitted_caller
from api.http.methods import served_routes
from tests.support import settings_for


def _routers_defined_in_the_package() -> dict[str, APIRouter]:
    """Every APIRouter any module of `api` holds, by where it was first found."""
    found: dict[str, APIRouter] = {}
    for module_info in pkgutil.walk_packages(api.__path__, prefix="api."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if isinstance(value, APIRouter) and all(value is not known for known in found.values()):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_router_in_the_package_is_served() -> None:
    defined = _routers_defined_in_the_package()
    assert defined, "the search found no router at all"
    left_out = [name for name, router in defined.items() if all(router is not served for served in ROUTERS)]
    assert left_out == []


def test_every_route_of_every_router_is_in_the_app() -> None:
    app = create_app(settings_for("postgresql://nobody@/nowhere"))
    # Included routers sit in `app.routes` as one entry each; their routes are listed through it.
    served = {(context.path, frozenset(context.methods or ())) for context in iter_route_contexts(app.routes)}
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            assert (route.path, frozenset(route.methods or ())) in served


def _depends_on(dependant: Dependant, call: object) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def test_a_route_declares_the_caller_exactly_when_it_admits_one() -> None:
    app = create_app(settings_for("postgresql://nobody@/nowhere", metrics_enabled=True))
    routes = [route for route in served_routes(app, ROUTERS) if isinstance(route, APIRoute)]
    assert any(isinstance(route, AuthenticatedRoute) for route in routes), "the search found none"
    for route in routes:
        declares = _depends_on(route.dependant, admitted_caller)
        assert declares == isinstance(route, AuthenticatedRoute), f"{route.methods} {route.path}"


def test_the_caller_declared_on_a_plain_route_is_a_clear_programming_error() -> None:
    app = FastAPI()

    @app.get("/api/{user_id}/plain")
    async def plain(caller: CallerDep) -> str:
        return caller.user.id

    async def call() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            await client.get("/api/alice/plain")

    with pytest.raises(RuntimeError, match=r"not an AuthenticatedRoute.*route_class=AuthenticatedRoute"):
        asyncio.run(call())
