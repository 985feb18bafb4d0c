"""A cap on each user's requests in flight, per worker: MAX_REQUESTS_IN_FLIGHT_PER_USER.

A request takes a slot once its token is verified and before its body is read, and gives it back
once its answer is sent (a stream's, once it starts), whatever the outcome: an answer its client
does not read holds the slot until the client is cut off (api/http/slow_readers.py). Without the
cap one user's slow bodies (a few bytes a second, each within its own timeout), or answers left
unread, could hold every request the server takes at once, and other users' requests would wait
behind them; with it, that user's further requests are refused at once with 429 and `Retry-After`,
and cost nothing but the token check.
"""

from api.http.problems import too_many_requests

# A slot is given back when one of the user's requests is done: usually within milliseconds, at
# worst BODY_TIMEOUT_SECONDS, or SEND_TIMEOUT_SECONDS for an answer its client stopped reading; a
# second is the shortest wait Retry-After can say.
_RETRY_AFTER_SECONDS = 1


class InFlightCap:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._in_flight: dict[str, int] = {}  # user id -> requests holding a slot; none at 0

    def enter(self, user_id: str) -> None:
        """Take one of the user's slots, or refuse the request with a 429."""
        held = self._in_flight.get(user_id, 0)
        if held >= self.per_user:
            raise too_many_requests(
                f"You have {self.per_user} requests in flight already; try again when one is done.",
                retry_after=_RETRY_AFTER_SECONDS,
            )
        self._in_flight[user_id] = held + 1

    def leave(self, user_id: str) -> None:
        """Give back a slot `enter` took."""
        held = self._in_flight[user_id] - 1
        if held:
            self._in_flight[user_id] = held
        else:
            del self._in_flight[user_id]

    def held(self, user_id: str) -> int:
        """The user's slots in use right now."""
        return self._in_flight.get(user_id, 0)
