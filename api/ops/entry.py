"""The `todo-api` command's entry point: it takes Ctrl-C, SIGTERM and SIGHUP over before anything
else is imported, so that one arriving while the CLI's libraries load (pydantic, SQLAlchemy, granian:
about 0.3 s) ends the command as one arriving later does, with its exit status and no traceback.

It imports nothing of its own beyond the standard library, for the same reason.
"""

import sys

try:
    import signal  # loads enum, long enough (10 ms) for a Ctrl-C to land in it
    from types import FrameType
except KeyboardInterrupt:
    sys.exit(130)

# What ends a command before the HTTP server takes the signals over. SIGHUP's default would kill the
# process with no cleanup: the embedded Postgres would keep running and a migration lock stay taken.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Whether this process was started ignoring SIGHUP, which it then goes on ignoring: `nohup` asks so,
# and a `nohup todo-api serve &` stopped when its terminal closed. Read before any handler is set. Not
# so SIGINT, which a script's background jobs are started ignoring too (bash does so): a
# `todo-api serve &` in a dev script then served on after Ctrl-C, orphaned, holding its port and
# Postgres (the verification probe, /tmp/s79-verify).
HANGUP_IGNORED_AT_START = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


# The exit status of the stop a signal asked for, kept in case Python swallowed its SystemExit;
# None while none was.
_stop_asked: int | None = None
# How many `StopsDeferred` blocks the program is inside: a stop that comes then is raised as the
# outermost one ends.
_deferring = 0
# Whether the stop was raised: its SystemExit is on its way out, through cleanup that may defer too.
_stopping = False

# Whether the command is `serve`, for which SIGTERM is the way it is asked to stop, and a stop so asked
# is its job done: exit 0, as granian's own stop once it serves. Any other command is one-shot, and
# SIGTERM cuts it short: 143 (128 + 15) as a shell reports it, so that a pipeline or a deploy step does
# not read an interrupted migrate or audit as a success. The command is the first argument (the only
# options before one, -h and --version, end the program at once); `main` in api/ops/cli.py says it
# again once argparse has read it.
_serving = sys.argv[1:2] == ["serve"]


def _stop_status(signum: int) -> int:
    """The exit status of a command stopped by the signal `signum`, before the HTTP server takes the
    signals over: 128 + its number, as shells report a command it ended; SIGTERM's is 0 for `serve`."""
    return 0 if signum == signal.SIGTERM and _serving else 128 + signum


def command_is_serve(serving: bool) -> None:
    """Say, once argparse has read the command, whether it is `serve` (see `_serving`)."""
    global _serving
    _serving = serving


# inspect.CO_GENERATOR, the flag of a generator's code, without importing inspect (tens of ms).
_CO_GENERATOR = 0x20


def stop_quietly(signum: int, frame: "FrameType | None") -> None:
    """Ctrl-C, SIGTERM or SIGHUP before the HTTP server takes the signals over (and after it hands
    them back): end as SystemExit, so that the finally blocks stop the embedded Postgres and remove
    what the command made, without a traceback. A second signal must not interrupt that cleanup.

    Never inside psycopg's generator, nor in anything it is running: psycopg runs each query as one,
    driven by its wait loop, and a stop raised inside it (or in a function it called, and passed up through
    it) ended the generator with its query still running; psycopg, which cancels the query of a wait
    it sees interrupted, then found nothing left to wait for, and its rollback on the busy connection
    printed "error ignored in rollback ... another command is already in progress". The signal is
    delivered again a moment later instead (`_ask_again_shortly`), by when the generator has handed
    back to its wait loop, whose interruption psycopg handles.

    Inside a `StopsDeferred` block, the stop is raised as the block ends.

    A signal that lands while Python runs a weakref callback or a finalizer (importlib drops a
    module's lock in one, so any import can) has its SystemExit swallowed and reported as "Exception
    ignored": the stop is kept, quietly, and honoured at the next `stop_quietly_on_signals()`."""
    global _stop_asked
    if _stop_asked is None:
        _stop_asked = _stop_status(signum)
    if _deferring:
        return
    if _inside_a_query(frame):
        _ask_again_shortly(signum)
        return
    _stop(_stop_asked)


def _stop(status: int) -> None:
    global _stopping
    _stopping = True
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    sys.unraisablehook = _quiet_about_a_swallowed_stop
    raise SystemExit(status)


class StopsDeferred:
    """A block a stop must not cut in two: one that arrives inside it ends the command as the block
    ends (see `stop_quietly`), not where it lands. The stop waits for the block: keep it to
    bookkeeping and waits with a bound (yoyo's, api/ops/migrations.py)."""

    def __enter__(self) -> None:
        global _deferring
        _deferring += 1

    def __exit__(self, *_: object) -> None:
        global _deferring
        _deferring -= 1
        if not _deferring and _stop_asked is not None and not _stopping:
            _stop(_stop_asked)


def stop_asked() -> int | None:
    """The exit status of the stop a signal asked for, if one did."""
    return _stop_asked


def _inside_a_query(frame: "FrameType | None") -> bool:
    """Whether `frame` is one of psycopg's generators (its queries), or one such a generator is
    running, however deep. Only psycopg's: a stop passing up through any other generator is an
    ordinary exception to it, and a context manager's generator runs all a start does before its
    `yield` (the embedded database's, say), which a stop must cut short at once."""
    while frame is not None:
        if frame.f_code.co_flags & _CO_GENERATOR and frame.f_globals.get("__name__", "").startswith(
            "psycopg"
        ):
            return True
        frame = frame.f_back
    return False


# How long a stop that landed inside a generator waits to be delivered again: psycopg's generators
# hand back to their wait loop within microseconds of being resumed.
_AGAIN_AFTER_SECONDS = 0.01


def _ask_again_shortly(signum: int) -> None:
    """Deliver `signum` to this (the main) thread again in a moment. Not now: `signal.raise_signal`
    runs the handler before it returns, in the handler's own frame, still inside the generator.
    `_thread.interrupt_main` only marks the signal as arrived, and is called from a timer's thread so
    that the handler runs again at the main thread's next check after that, not within this one."""
    import _thread
    import threading

    again = threading.Timer(_AGAIN_AFTER_SECONDS, _thread.interrupt_main, args=(signum,))
    again.daemon = True
    again.start()


def _quiet_about_a_swallowed_stop(unraisable: "sys.UnraisableHookArgs") -> None:
    if unraisable.exc_type is not SystemExit:
        sys.__unraisablehook__(unraisable)


def stop_quietly_on_signals() -> None:
    """Set `stop_quietly` on the stop signals; or, if one already came and its SystemExit was
    swallowed, end now with its exit status."""
    if _stop_asked is not None:
        raise SystemExit(_stop_asked)
    for stop in STOP_SIGNALS:
        if not (stop == signal.SIGHUP and HANGUP_IGNORED_AT_START):
            signal.signal(stop, stop_quietly)


def main() -> None:
    stop_quietly_on_signals()
    from api.ops import cli  # the slow part, now interruptible

    cli.main(sys.argv[1:])
