"""The app serves every router the package defines: a router left out of `api.app.ROUTERS` would
answer 404 on all its routes, silently."""

import importlib
import pkgutil

from fastapi import APIRouter
from fastapi.routing import APIRoute, iter_route_contexts

import api
from api.app import ROUTERS, create_app
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
