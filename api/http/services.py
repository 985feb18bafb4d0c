"""What the requests of one app share, built once by `create_app` and read through `services`.

One typed object rather than names set one by one on `app.state`, which Starlette reads untyped: a
reader can jump to each one's type, mypy checks every use, and a misspelt name fails the type check
rather than a request. Live changes add their hub to it (`api.events.services`).
"""

from dataclasses import dataclass

from starlette.applications import Starlette

from api.auth.verification import Authenticator
from api.db.database import Database
from api.db.isolation import IsolationWatch
from api.db.stored_owners import StoredOwners
from api.http.in_flight import InFlightCap
from api.http.rate_limit import RateLimiter
from api.http.readiness import SharedReadiness
from api.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    # Which users' rows this worker has stored as their tokens describe them.
    stored_owners: StoredOwners
    authenticator: Authenticator
    isolation: IsolationWatch
    # None when RATE_LIMIT_PER_MINUTE is 0: no limit.
    rate_limiter: RateLimiter | None
    in_flight: InFlightCap
    readiness: SharedReadiness


def services(app: Starlette) -> Services:
    """The services `create_app` built for `app` (a request's is `request.app`): the one place that
    reads them off `app.state`."""
    found: Services = app.state.services
    return found
