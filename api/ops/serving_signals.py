"""What closing the terminal (SIGHUP) does once granian serves.

Granian's main process respawns its workers on SIGHUP, and the workers it forks ignore it. Closing
the terminal sends SIGHUP to its foreground process group, so a `serve` whose terminal was closed
served on with no terminal left to stop it, holding its port and the embedded Postgres from the next
`serve`. It stops instead, as on SIGTERM (the requests in flight finish, the event streams end), and
exits 129 as a hung-up command does, and as `serve` still starting does (api/ops/entry.py). Started
ignoring SIGHUP (under `nohup`), it ignores it while it serves too, as before it served.
"""

import signal
import threading
from types import FrameType
from typing import Any

from api.ops.entry import HANGUP_IGNORED_AT_START


def stop_on_hangup(hung_up: threading.Event) -> None:
    """Called by granian in its main process once it has set its own handlers, before it forks the
    workers: SIGHUP sets `hung_up` and stops the server as SIGTERM does, unless the command was started
    ignoring it (`HANGUP_IGNORED_AT_START`)."""
    if HANGUP_IGNORED_AT_START:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return
    stop: Any = signal.getsignal(signal.SIGTERM)  # granian's: a graceful stop of every worker

    def hang_up(signum: int, frame: FrameType | None) -> None:
        hung_up.set()
        stop(signum, frame)

    signal.signal(signal.SIGHUP, hang_up)
