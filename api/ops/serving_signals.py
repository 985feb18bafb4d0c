"""What closing the terminal (SIGHUP) does once granian serves.

Granian's main process respawns its workers on SIGHUP, and the workers it forks ignore it. Closing
the terminal sends SIGHUP to its foreground process group, so a `serve` whose terminal was closed
served on with no terminal left to stop it, holding its port and the embedded Postgres from the next
`serve`. It stops instead, as on SIGTERM (the requests in flight finish, the event streams end), and
exits 129 as a hung-up command does, and as `serve` still starting does (api/ops/entry.py). A stop
signal the command was started ignoring (`nohup` ignores SIGHUP) stays ignored, as before it served.
"""

import signal
import threading
from types import FrameType
from typing import Any

from api.ops.entry import IGNORED_AT_START


def stop_on_hangup(hung_up: threading.Event) -> None:
    """Called by granian in its main process once it has set its own handlers, before it forks the
    workers: SIGHUP sets `hung_up` and stops the server as SIGTERM does; the stop signals the command
    was started ignoring are ignored again."""
    stop: Any = signal.getsignal(signal.SIGTERM)  # granian's: a graceful stop of every worker

    def hang_up(signum: int, frame: FrameType | None) -> None:
        hung_up.set()
        stop(signum, frame)

    signal.signal(signal.SIGHUP, hang_up)
    for ignored in IGNORED_AT_START:
        signal.signal(ignored, signal.SIG_IGN)
