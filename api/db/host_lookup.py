"""The API's connections: they speak UTF-8 (`CLIENT_ENCODING`), and their host names are looked up
within the connect timeout.

psycopg looks a host name up itself, with `socket.getaddrinfo` (in the event loop's executor for an
async connection), before libpq connects, and bounds only the connecting by `connect_timeout`: a
name server that never answers held `migrate`, `policies` and `serve` for as long as the system's
resolver kept asking (minutes, under `options timeout:30 attempts:5`), and a worker's pool, readiness
and isolation check with them; a stop signal meanwhile waited for it too.

Here each name is looked up in a daemon thread of its own, waited for at most the URL's
`connect_timeout` (DB_CONNECT_TIMEOUT_SECONDS: `api.db.urls.libpq_url` adds it to every URL), and
handed to psycopg as `hostaddr`, one connection attempt per address, as psycopg's own lookup
does. A lookup that did not answer in time is left to finish in its thread, which nothing waits
for, not even the interpreter's exit. A connection that begins while a lookup of its name is
younger than its own connect_timeout waits for that one rather than start another, so a silent
name server costs a thread per name per connect_timeout, not one per try, and a lookup stuck in a
resolver that has since recovered holds no connection past one connect_timeout.
The hook is the one psycopg documents for changing parameters before connecting,
`_get_connection_params`.
"""

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import math
import os
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg.abc import ConnDict
from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo
from psycopg.rows import Row

Addresses = list[str]


class HostLookupTimeout(psycopg.OperationalError):
    """No host name of the URL was looked up within its connect_timeout."""


# The newest lookup under way of each host name, and when it began (time.monotonic()).
_under_way: dict[str, tuple[float, concurrent.futures.Future[Addresses]]] = {}
_under_way_lock = threading.Lock()


def _forget_lookups_under_way() -> None:
    # A forked child has none of its parent's threads: it looks up afresh.
    global _under_way_lock
    _under_way.clear()
    _under_way_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_lookups_under_way)


def _look_up(host: str, shared_within_seconds: float) -> concurrent.futures.Future[Addresses]:
    now = time.monotonic()
    with _under_way_lock:
        began, lookup = _under_way.get(host, (-math.inf, None))
        if lookup is None or now - began >= shared_within_seconds:
            lookup = concurrent.futures.Future()
            # Running: a connection that gives up waiting cannot cancel it for the others.
            lookup.set_running_or_notify_cancel()
            _under_way[host] = (now, lookup)
            threading.Thread(target=_resolve, args=(host, lookup), name="host-lookup", daemon=True).start()
        return lookup


def _resolve(host: str, lookup: concurrent.futures.Future[Addresses]) -> None:
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP, type=socket.SOCK_STREAM)
    except OSError as error:
        outcome: Addresses | OSError = error
    else:
        outcome = [str(address[4][0]) for address in found]
    with _under_way_lock:  # gone before it is told, so that a later connection asks afresh
        if _under_way.get(host, (0.0, None))[1] is lookup:
            del _under_way[host]
    if isinstance(outcome, OSError):
        lookup.set_exception(outcome)
    else:
        lookup.set_result(outcome)


def _names(params: ConnDict) -> list[str]:
    """The host names psycopg would look up: none when the URL gives addresses (`hostaddr`)."""
    if params.get("hostaddr"):
        return []
    return [host for host in str(params.get("host") or "").split(",") if _is_a_name(host)]


def _is_a_name(host: str) -> bool:
    if not host or host.startswith("/") or host[1:2] == ":":  # a socket folder (or none)
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _with_addresses(params: ConnDict, found: dict[str, Addresses | BaseException]) -> ConnDict:
    """`params` with one host entry per address found, as psycopg's own lookup makes its attempts; a
    name that was not found is left out, as psycopg leaves it out, unless nothing is left at all."""
    hosts = str(params["host"]).split(",")
    # One port per host is spelt out per address; one port for all stays as it is.
    given_ports = str(params.get("port") or "").split(",")
    ports = given_ports if len(given_ports) == len(hosts) > 1 else None
    entries: list[tuple[str, str, str | None]] = []
    for index, host in enumerate(hosts):
        port = ports[index] if ports is not None else None
        outcome = found.get(host)
        if outcome is None:  # a socket folder or an address: libpq's as it is
            entries.append((host, host if _is_an_address(host) else "", port))
        elif not isinstance(outcome, BaseException):
            entries.extend((host, address, port) for address in outcome)
    if not entries:
        failed = [(host, outcome) for host, outcome in found.items() if isinstance(outcome, BaseException)]
        host, error = failed[-1]
        if isinstance(error, TimeoutError):
            seconds = timeout_from_conninfo(params)
            raise HostLookupTimeout(f"the lookup of host {host!r} got no answer within {seconds} s")
        raise psycopg.OperationalError(f"failed to resolve host {host!r}: {error}")
    resolved = {
        **params,
        "host": ",".join(host for host, _, _ in entries),
        "hostaddr": ",".join(address for _, address, _ in entries),
    }
    if ports is not None:
        resolved["port"] = ",".join(port or "" for _, _, port in entries)
    return resolved


def _is_an_address(host: str) -> bool:
    return bool(host) and not host.startswith("/") and not _is_a_name(host)


def _outcome(lookup: concurrent.futures.Future[Addresses]) -> Addresses | BaseException:
    if not lookup.done():
        return TimeoutError()
    return lookup.exception() or lookup.result()


def looked_up(params: ConnDict) -> ConnDict:
    """`params` with its host names looked up, waiting at most its connect_timeout."""
    names = _names(params)
    if not names:
        return params
    seconds = timeout_from_conninfo(params)
    lookups = {name: _look_up(name, seconds) for name in names}
    concurrent.futures.wait(lookups.values(), timeout=seconds)
    return _with_addresses(params, {name: _outcome(lookup) for name, lookup in lookups.items()})


async def looked_up_async(params: ConnDict) -> ConnDict:
    """`looked_up`, waited for without blocking the event loop."""
    names = _names(params)
    if not names:
        return params
    seconds = timeout_from_conninfo(params)
    lookups = {name: _look_up(name, seconds) for name in names}
    deadline = time.monotonic() + seconds
    for lookup in lookups.values():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(asyncio.wrap_future(lookup), remaining)
    return _with_addresses(params, {name: _outcome(lookup) for name, lookup in lookups.items()})


# psycopg encodes what it sends, and decodes what it reads, in the session's client_encoding, and the
# API's text is Unicode: a DBA's client_encoding (LATIN1, on the database, the role, in the URL or
# PGCLIENTENCODING) made a title outside it a 500, and an event with an accent in it cut its stream;
# SQL_ASCII, in which psycopg reads text as bytes, made serve's start-up checks and `policies` a
# traceback (the environment probe, /tmp/s79-envs). Given as a connection parameter it beats each of
# those, and PgBouncer keeps it per client.
CLIENT_ENCODING = "UTF8"


class LookupBoundedConnection(psycopg.Connection[Row]):
    """A psycopg connection that speaks UTF-8, whose host names are looked up within its
    connect_timeout."""

    @classmethod
    def _get_connection_params(cls, conninfo: str, **kwargs: Any) -> ConnDict:
        return looked_up(conninfo_to_dict(conninfo, **kwargs, client_encoding=CLIENT_ENCODING))


class LookupBoundedAsyncConnection(psycopg.AsyncConnection[Row]):
    """An async psycopg connection that speaks UTF-8, whose host names are looked up within its
    connect_timeout."""

    @classmethod
    async def _get_connection_params(cls, conninfo: str, **kwargs: Any) -> ConnDict:
        return await looked_up_async(conninfo_to_dict(conninfo, **kwargs, client_encoding=CLIENT_ENCODING))
