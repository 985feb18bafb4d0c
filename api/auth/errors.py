"""Why a caller could not be identified; the HTTP layer turns each into its problem response."""


class InvalidToken(Exception):  # noqa: N818 (named for what the caller sent)
    """The request does not prove who is calling. `reason` is for the caller and never echoes the token."""

    def __init__(self, reason: str, *, token_was_sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_was_sent = token_was_sent


class KeysUnavailable(Exception):  # noqa: N818 (a state, not a mistake)
    """The key that would judge this token cannot be had now: no key set has ever been fetched, or
    the token may be signed by a key published since the last fetch, and the cooldown or a failed
    fetch keeps us from fetching again. Either way the token may be good, so it is no 401.
    `unpublished_kid`: the second case, where keys were fetched but lack the token's kid."""

    def __init__(self, url: str, *, retry_after_seconds: int, unpublished_kid: bool = False) -> None:
        super().__init__(url)
        self.retry_after_seconds = retry_after_seconds
        self.unpublished_kid = unpublished_kid
