"""The database URL forms users paste, turned into what each client needs.

libpq (under psycopg) is the authority on connection strings: it reads `postgresql://` and
`postgres://` URLs, Neon's `sslmode=require&channel_binding=require`, and a Unix-socket `host=` query
parameter. We only translate the scheme: yoyo picks its driver by scheme, and
`postgresql+psycopg://` (yoyo's name for psycopg 3) is not something libpq reads.
"""

from urllib.parse import urlencode

import psycopg.conninfo

_SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")


class DatabaseUrlError(ValueError):
    pass


def _strip_scheme(url: str) -> str:
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme) :]
    raise DatabaseUrlError(
        "DATABASE_URL must start with postgresql:// or postgres:// "
        "(for example postgresql://user:password@host/dbname?sslmode=require)"
    )


def libpq_url(url: str, **extra: str | int) -> str:
    """The URL as libpq reads it, with extra connection parameters (say connect_timeout) added."""
    plain = "postgresql://" + _strip_scheme(url)
    try:
        # Parsed even without extras: a URL libpq cannot read is the user's to fix, said here.
        return psycopg.conninfo.make_conninfo(plain, **extra)
    except psycopg.ProgrammingError as error:
        raise DatabaseUrlError(f"DATABASE_URL is not a valid connection URL: {error}") from None


def yoyo_url(url: str, **extra: str | int) -> str:
    """The URL with the scheme that makes yoyo use psycopg 3, with extra connection parameters added
    as libpq_url adds them: yoyo hands its URL's query to psycopg, the last of a name winning."""
    rest = _strip_scheme(url)
    if not extra:
        return "postgresql+psycopg://" + rest
    libpq_url(url, **extra)  # refuses a parameter libpq does not know, as serve's URL would
    return "postgresql+psycopg://" + rest + ("&" if "?" in rest else "?") + urlencode(extra)
