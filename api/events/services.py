"""The app's services with live changes' hub, which only this package and the worker read."""

from dataclasses import dataclass

from starlette.applications import Starlette

from api.events.hub import Hub
from api.http.services import Services, services


@dataclass(frozen=True, slots=True)
class LiveServices(Services):
    """What `create_app` builds: `Services`, and the hub of this worker's event streams. The hub is
    kept out of `Services`, which the HTTP layer below this package reads, since it cannot know
    the hub's type."""

    events_hub: Hub


def live_services(app: Starlette) -> LiveServices:
    """`services(app)`, with the hub."""
    found = services(app)
    if not isinstance(found, LiveServices):
        raise TypeError("an app create_app did not build has no events hub")
    return found
