"""The database URL forms users paste, turned into what each client needs.

libpq (under psycopg) is the authority on connection strings: it reads `postgresql://` and
`postgres://` URLs, Neon's `sslmode=require&channel_binding=require`, and a Unix-socket `host=` query
parameter. We only translate the scheme: yoyo picks its driver by scheme, and
`postgresql+psycopg://` (yoyo's name for psycopg 3) is not something libpq reads.

A URL that cannot be read is refused naming its setting and what is wrong, never quoting the URL: its
user and password would end up on the terminal and in the logs.
"""

from collections.abc import Mapping
from urllib.parse import urlencode

import psycopg.conninfo

_SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")


class DatabaseUrlError(ValueError):
    pass


def _refuse_what_surrounds_it(url: str, setting: str) -> None:
    """What is pasted with a URL and was then read as part of it: a line break (`echo "$URL" | base64`
    into a Kubernetes secret) became part of the database's name, and quotes kept in the value
    (`docker run --env-file`), or white space before it, made it "not start with postgresql://"."""
    if any(not character.isprintable() for character in url):
        found = "a line break, a tab or another control character in it: remove it"
    elif url[:1] in ("'", '"') and url[-1:] == url[:1]:
        found = "quotes around it, which are part of its value where no shell reads it: remove them"
    elif url[:1].isspace():
        found = "white space at its start: remove it"
    else:
        return
    raise DatabaseUrlError(f"{setting} has {found}")


def _strip_scheme(url: str, setting: str) -> str:
    _refuse_what_surrounds_it(url, setting)
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme) :]
    raise DatabaseUrlError(
        f"{setting} must start with postgresql:// or postgres:// "
        "(for example postgresql://user:password@host/dbname?sslmode=require)"
    )


# libpq's complaints a user can act on, in words that quote nothing of the URL.
_REASONS = {
    "invalid percent-encoded token": "a % not followed by two hex digits (write a % itself as %25)",
    "forbidden value %00": "%00, a zero byte, which no part of it may hold",
    "unexpected spaces found": "a space, which must be percent-encoded as %20",
    "end of string reached when looking for matching": "an IPv6 host address without its closing ]",
}


# What a user or password must not hold as it is, said in each refusal of one that does.
_ENCODE_THEM = "its user or password holds ?, / or @, which must be percent-encoded there as %3F, %2F or %40"


def _reason(error: psycopg.ProgrammingError, rest: str) -> str:
    """What libpq found wrong, without the text it quotes (the user and password, or the whole URL)
    unless that is only a parameter's name."""
    message = str(error).strip()
    for start, reason in _REASONS.items():
        if message.startswith(start):
            return reason
    if message.startswith(("invalid URI query parameter", "invalid connection option")):
        if "@" in rest.partition("?")[2]:
            # The name may be a password's piece: `u:12?x=y/z@host`, read as host `u`, port 12, query x.
            return f"it names a parameter libpq does not know, or {_ENCODE_THEM}"
        return message  # it quotes a parameter's name, never its value
    return message.partition('"')[0].rstrip(" :") or "libpq cannot read it"


def _refuse_a_split_userinfo(rest: str, setting: str) -> None:
    """A ?, / or @ in the password (or user) makes libpq read part of it as the host, the port, the
    database name or the query, which would then be shown in messages about connecting (or quoted,
    as a parameter libpq does not know). libpq takes a user and password from before the first @
    that comes before the first /, and the host from there to the next / or ?. Three shapes:
    - a / or @ before the last @ ahead of any ?: `u:p/w@host/db`, `u:p@w@host/db`;
    - a ? and then a / in the password (`u:12?x=y/z@host/db`): read as host `u`, port 12 and the query
      `x=y/z@host/db`, told from a query's own @ (`host?user=bob@corp`) by the path after the @;
    - a ? and then an @ and a / (`u:pa?ss@x/y@host/db`): the database name holds an @, which a
      database's own is written as, percent-encoded, %40."""
    userinfo = rest.partition("?")[0].rpartition("@")[0]
    authority, slash, after_it = rest.partition("/")
    path = after_it.partition("?")[0]
    if (
        "/" in userinfo
        or "@" in userinfo
        or (slash and "?" in authority and "@" not in authority and "/" in after_it.rpartition("@")[2])
        or ("@" in authority and "@" in path)
    ):
        raise DatabaseUrlError(f"{setting} is not a valid connection URL: {_ENCODE_THEM}")


def _refuse_a_misread_host(parsed: Mapping[str, object], setting: str) -> None:
    """What libpq read as the hosts and ports, checked: a ? before an @ or a / in the password ends
    the user and password early for libpq (`u:pa?ss@x@host`), and the rest of the password is then
    read as a host or a port, which every message about connecting would show."""
    hosts, ports = str(parsed.get("host", "")), str(parsed.get("port", ""))
    if "@" in hosts or not all(port.isdigit() for port in ports.split(",") if port):
        raise DatabaseUrlError(
            f"{setting} is not a valid connection URL: its host or port is not one, most likely because "
            f"{_ENCODE_THEM}"
        )


def libpq_url(url: str, setting: str = "DATABASE_URL", /, **extra: str | int) -> str:
    """The URL as libpq reads it, with extra connection parameters (say connect_timeout) added.
    `setting` is the variable it came from, which a refusal names (positional: `extra` holds any name)."""
    rest = _strip_scheme(url, setting)
    _refuse_a_split_userinfo(rest, setting)
    try:
        # Parsed even without extras: a URL libpq cannot read is the user's to fix, said here.
        conninfo = psycopg.conninfo.make_conninfo("postgresql://" + rest, **extra)
        parsed = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as error:
        raise DatabaseUrlError(f"{setting} is not a valid connection URL: {_reason(error, rest)}") from None
    except UnicodeDecodeError:
        raise DatabaseUrlError(
            f"{setting} is not a valid connection URL: a percent-encoded sequence that is not UTF-8"
        ) from None
    _refuse_a_misread_host(parsed, setting)
    return conninfo


def yoyo_url(url: str, **extra: str | int) -> str:
    """The URL with the scheme that makes yoyo use psycopg 3: as given (for a person to run `yoyo`
    with), or, with extra connection parameters, every parameter as libpq reads the URL in the query,
    which yoyo hands to psycopg as it is. yoyo reads the authority itself (urllib's urlsplit), which
    takes neither a socket folder percent-encoded as the host (it looked that up as a host name) nor
    libpq's several hosts tried in turn (`h1:5432,h2:5432`, a traceback): both reach psycopg whole
    this way, as serve's connections do."""
    rest = _strip_scheme(url, "DATABASE_URL")
    if not extra:
        return "postgresql+psycopg://" + rest
    # Refuses a parameter libpq does not know, as serve's would.
    parameters = psycopg.conninfo.conninfo_to_dict(libpq_url(url, "DATABASE_URL", **extra))
    return "postgresql+psycopg://?" + urlencode(parameters)
