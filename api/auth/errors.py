"""Why a caller could not be identified; the HTTP layer turns each into its problem response."""


class InvalidToken(Exception):  # noqa: N818 (named for what the caller sent)
    """The request does not prove who is calling. `reason` is for the caller and never echoes the token."""

    def __init__(self, reason: str, *, token_was_sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_was_sent = token_was_sent


class KeysUnavailable(Exception):  # noqa: N818 (a state, not a mistake)
    """No key set has ever been fetched, so no asymmetric token can be judged either way."""
