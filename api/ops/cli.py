"""todo-api: run the API, set up its database, mint a development token, audit isolation.

Every failure a user can cause ends in one message naming the cause and the fix, and exit status 1
(api/ops/failures.py), or 2 for `policies`, whose 1 means findings (AUDIT_NOT_RUN), a standard output
that cannot be written included; a reader of it that goes away (`| head`) ends the command quietly,
with exit status 1. `serve` checks what it can
(api/ops/startup_checks.py) before it starts anything. Ctrl-C, SIGTERM or SIGHUP (the terminal
closed) at any moment ends a command quietly, after the cleanup of whatever it had started. Ctrl-C
exits 130, SIGHUP 129 and SIGTERM 143 as shells expect, so that an interrupted migrate or audit never
reads as a success; SIGTERM, the way a server is asked to stop, ends `serve` with 0 (api/ops/entry.py).
Once `serve` serves, granian takes the signals over (SIGINT and SIGTERM are its one way to stop,
and a server stopped that way exits 0; SIGHUP stops it the same way, and exits 129:
api/ops/serving_signals.py). Modules that import
prometheus_client are imported inside the commands, after `serve` has pointed it at the folder its
workers share (api/telemetry/multiprocess.py).
"""

# Before the slow imports below (about 0.3 s): run as `python -m api.ops.cli` (the suite,
# docs/extending.md), Ctrl-C, SIGTERM or SIGHUP while they load ends the command as it does under
# `todo-api` (api/ops/entry.py), with its exit status and no traceback.
from api.ops.entry import command_is_serve, stop_quietly_on_signals

if __name__ == "__main__":
    stop_quietly_on_signals()

import argparse
import asyncio
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import psycopg
from pydantic import ValidationError

from api import __version__
from api.auth.dev_tokens import mint_token
from api.auth.errors import InvalidToken
from api.auth.principal import principal_from_claims
from api.db.sql_files import SqlFilesMissing, display_path
from api.db.urls import DatabaseUrlError, libpq_url
from api.ops import embedded
from api.ops.cluster import create_login_role, unusable_login_role_name
from api.ops.failures import CommandFailed, configuration_failure, database_failure
from api.ops.migrations import MigratedByANewerRelease, MigrationFailed, apply_migrations
from api.ops.startup_checks import (
    check_database,
    empty_database_url,
    holding_the_port,
    near_misses,
    refuse_migrating_another_database,
    refuse_the_development_database_beyond_loopback,
    refuse_what_migrating_left,
    secret_doubts,
)
from api.settings import EnvFileError, Settings, env_file_names, read_log_settings
from api.telemetry.logs import LOG_LOCK_VARIABLE, configure_logging, default_format
from api.telemetry.multiprocess import DIR_VARIABLE

logger = logging.getLogger("api.ops.serve")

_DATA_DIR_HELP = "embedded Postgres folder when DATABASE_URL is unset (default: DATA_DIR, else ./.data)"


def _load_settings() -> tuple[Settings, list[str]]:
    """The settings, and a warning for each name set that is close to a setting's but is none, and for a
    secret that may carry what surrounded it (`secret_doubts`). A .env that cannot be read whole is
    refused before anything else: never run on other settings than the ones written there."""
    try:
        env_file = env_file_names()
    except EnvFileError as unusable:
        raise CommandFailed(str(unusable)) from None
    try:
        settings = Settings()
    except ValidationError as error:
        raise configuration_failure(error) from None
    doubts = near_misses(os.environ, Settings.model_fields, env_file=env_file)
    return settings, doubts + empty_database_url(os.environ, settings) + secret_doubts(settings)


def _settings() -> Settings:
    settings, warnings = _load_settings()
    for warning in warnings:
        print(f"todo-api: warning: {warning}", file=sys.stderr)
    return settings


def _output(text: str) -> None:
    """Print `text` as a line of standard output, flushed, so that what cannot be written is a failure
    of the command: a full disk or a closed stdout is one line, never a traceback nor exit 0. A reader
    that went away (`| head`) is BrokenPipeError, which `main` ends quietly."""
    if sys.stdout is None:
        raise CommandFailed("standard output is closed (>&-): give the command somewhere to write")
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as error:
        _stdout_to_devnull()
        raise CommandFailed(f"cannot write to standard output: {error.strerror}") from None


def _stdout_to_devnull() -> None:
    """What could not be written stays in stdout's buffer, and Python's own flush of it at exit fails
    again: "Exception ignored" after the command's one line, and exit 120 (where PYTHONUNBUFFERED is
    unset, as in most shells). Point stdout at /dev/null first
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _installed_command() -> str:
    """`todo-api` as the user can type it: bare when it is on PATH, else the path of this executable
    (`.venv/bin/todo-api` after the README's first command)."""
    script = Path(sys.argv[0])
    if script.name != "todo-api":  # run as `python -m api.ops.cli`
        script = Path(sys.executable).parent / "todo-api"
    on_path = shutil.which("todo-api")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "todo-api"
    if not script.is_absolute() and len(script.parts) > 1:
        return str(script)
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script.absolute())


# What a POSIX shell reads as more than a letter in an unquoted word.
_READ_BY_THE_SHELL = frozenset(" \t\n\"'\\$`|&;<>()*?[")


def _usable_folder(data_dir: Path) -> Path:
    """The embedded database's folder, made if missing; one line when it cannot be (a file is in the
    way, the file system is read-only, ...)."""
    try:
        str(data_dir).encode()
    except UnicodeEncodeError:
        # A byte the locale cannot decode: the wheel reads initdb's report of the path as UTF-8, and
        # failed there with a traceback, leaving a half-made folder.
        raise CommandFailed(_unusable_folder(data_dir, "its name is not UTF-8 text")) from None
    try:
        path = str(data_dir.resolve())
    except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) since
        raise CommandFailed(_unusable_folder(data_dir, "a loop of links")) from None
    special = next((character for character in path if character in _READ_BY_THE_SHELL), None)
    if special is not None and embedded.socket_in_the_folder(Path(path)):
        # The wheel has pg_ctl start Postgres with `-o "-k <its socket's folder>"`, which pg_ctl hands
        # to a shell unquoted: every start failed after initdb ("postgres: invalid argument").
        named = "a space" if special == " " else repr(special)
        where = "its path" if path == str(data_dir) else path
        cannot = f"{where} has {named}, which the embedded Postgres's start command cannot take"
        raise CommandFailed(_unusable_folder(data_dir, cannot))
    try:
        embedded.make_folder(data_dir)
    except OSError as error:
        raise CommandFailed(_unusable_folder(data_dir, _why_no_folder(data_dir, error))) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise CommandFailed(_unusable_folder(data_dir, "not writable"))
    return data_dir


def _why_no_folder(data_dir: Path, error: OSError) -> str | None:
    if data_dir.is_file():
        return "a file, not a folder"
    # A link to a folder that is not there (a disk not mounted, say) is left as it is, not followed
    # and made: mkdir says only "File exists" of it (the verification probe of stop 84).
    for path in (data_dir, *data_dir.parents):
        if path.is_symlink() and not path.exists():
            link = "a link" if path == data_dir else f"{path} is a link"
            return f"{link} to {os.readlink(path)}, which is not there"
    return error.strerror


def _unusable_folder(data_dir: Path, reason: str | None) -> str:
    where = f"cannot keep the embedded database in {data_dir} ({reason})"
    return f"{where}: pick another with --data-dir or DATA_DIR"


def _readable(url: str, setting: str) -> str:
    """`url` when libpq can read it; otherwise a refusal naming `setting`, the variable it came from."""
    try:
        libpq_url(url, setting)
    except DatabaseUrlError as error:
        raise CommandFailed(str(error)) from None
    return url


@contextmanager
def _database_url(
    settings: Settings, data_dir: Path | None, *, to_audit: bool = False, to_serve: bool = False
) -> Iterator[str]:
    """DATABASE_URL when set; otherwise the embedded database, stopped again on the way out. `to_audit`:
    only one already made, since an audit changes nothing (a new one would be 46 MB of .data, and
    an audit of a database nothing serves from), and one found running is left running. `to_serve`:
    started again whenever it stops meanwhile."""
    if settings.database_url is not None:
        yield _readable(settings.database_url.get_secret_value(), "DATABASE_URL")
        return
    # Before the folder is made: without the wheel, a start would only leave a half-made .data behind.
    if not embedded.installed():
        raise CommandFailed(embedded.install_hint())
    if (refusal := embedded.unnamed_user_refusal() or embedded.runtime_folder_refusal()) is not None:
        raise CommandFailed(refusal)
    folder = data_dir or settings.data_dir
    if to_audit and not embedded.made(folder):
        raise CommandFailed(
            f"no DATABASE_URL, and no embedded database in {folder} to audit: run `todo-api migrate` "
            "or `todo-api serve` there first (or name its folder with --data-dir), or set DATABASE_URL"
        )
    database = embedded.start(_usable_folder(folder), leave_running=to_audit)
    try:
        embedded.export_environment(database)
        with database.kept_running() if to_serve else nullcontext():
            yield database.url
    finally:
        database.stop()


def _migrate(url: str, settings: Settings, setting: str, *, to_serve: bool = False) -> str:
    """Migrate the database at `url`, which came from the variable `setting`. `to_serve`: a database a
    newer release migrated is left as it is, for serve's isolation check to judge (this release serves
    it while its reach is this release's), rather than refused."""
    try:
        applied = apply_migrations(
            url, connect_timeout_seconds=settings.db_connect_timeout_seconds, setting=setting
        )
    except MigratedByANewerRelease as newer:
        if not to_serve:
            raise CommandFailed(str(newer)) from None
        return (
            f"not migrating: the database was migrated by a newer release (up to {newer.newest_applied}); "
            "it is left as it is, and served while what todo_app reaches is what this release expects"
        )
    except psycopg.OperationalError as error:
        raise database_failure(error, url, setting) from None
    except (SqlFilesMissing, MigrationFailed) as error:
        raise CommandFailed(str(error)) from None
    return f"migrations applied: {', '.join(applied) or 'none pending'}; policies refreshed"


def _ready_message(base: str, *, generated_secret: bool, origins: str, data_dir: Path | None) -> str:
    lines = [f"todo-api: serving on {base} (docs: {base}/docs)"]
    if generated_secret:
        token = f"{shlex.quote(_installed_command())} token alice"
        if data_dir is not None:
            token += f" --data-dir {shlex.quote(str(data_dir))}"
        lines += [
            "Development mode: embedded Postgres and a generated secret. Get a token and try it:",
            f"  TOKEN=$({token})",
            f'  curl -H "Authorization: Bearer $TOKEN" {base}/api/alice/tasks',
        ]
    lines.append(f"Browsers may call it from: {origins or 'no origin'} (CORS_ORIGINS).")
    return "\n".join(lines)


@contextmanager
def _serving_folder() -> Iterator[Path]:
    """A folder for this run's workers: their metrics, the lock their log records are written under,
    and the mark of the first one ready."""
    # Every temporary folder full, say: a traceback before (the disk probe of stop 83).
    try:
        folder = Path(tempfile.mkdtemp(prefix="todo-api-serve-"))
    except OSError as error:
        raise CommandFailed(
            f"cannot make a folder for this run's workers ({error}): free some space in the temporary "
            "folder, or set TMPDIR to one with room"
        ) from None
    try:
        (folder / "metrics").mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serve(args: argparse.Namespace) -> None:
    # Before the other settings are read, so that a mistake in one of them is a line in LOG_FORMAT too.
    log = read_log_settings()
    configure_logging(log.log_level, log.log_format or default_format())
    settings, warnings = _load_settings()
    for warning in warnings:
        logger.warning("todo-api: %s", warning)
    development = settings.database_url is None
    if development:
        refuse_the_development_database_beyond_loopback(args.host)
        if not embedded.installed():
            raise CommandFailed(embedded.install_hint())
    elif missing := settings.missing_token_source():
        raise CommandFailed(f"invalid configuration: {missing}")
    if settings.database_direct_url is not None:
        # Read by each worker as it starts, which would fail, and be restarted, in a loop.
        _readable(settings.database_direct_url.get_secret_value(), "DATABASE_DIRECT_URL")
    # Port 0 (any free one) is the port the kernel picks here, so that the one served is announced;
    # held from here on, so that no other server or program takes it while this one starts.
    with (
        holding_the_port(args.host, args.port) as (address, port),
        _serving_folder() as folder,
        _database_url(settings, args.data_dir, to_serve=True) as url,
    ):
        os.environ[DIR_VARIABLE] = str(folder / "metrics")
        os.environ[LOG_LOCK_VARIABLE] = str(folder / "log.lock")
        origins = ",".join(settings.cors_origins)
        if development and not origins:
            origins = os.environ["CORS_ORIGINS"] = embedded.DEVELOPMENT_ORIGINS
        if development:
            logger.info("todo-api: %s", _migrate(url, settings, "DATABASE_URL", to_serve=True))
        elif args.migrate:
            # As `todo-api migrate` would: the schema's owner migrates, while DATABASE_URL's role
            # (one that owns nothing, in production) serves.
            _refuse_migrating_another_database(settings)
            with _migration_url(settings, args.data_dir) as migration_url:
                migrated = _migrate(migration_url, settings, _migration_setting(settings), to_serve=True)
                logger.info("todo-api: %s", migrated)
        asyncio.run(check_database(url, settings, args.workers))

        from api.ops.server import serve_with_granian, served_url
        from api.telemetry.metrics import forget_this_process

        # This process serves nothing: its live gauges (an isolation verdict of 0) must not count
        # beside the workers'.
        forget_this_process()
        # A stop whose SystemExit an import on the way here swallowed (api/ops/entry.py) ends the
        # command now, rather than go unheard once granian has the signals.
        stop_quietly_on_signals()
        serve_with_granian(
            host=address,
            port=port,
            workers=args.workers,
            log_level=settings.log_level,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            max_streams_per_worker=settings.max_streams_per_worker,
            db_pool_size=settings.db_pool_size,
            keep_alive_timeout_seconds=settings.keep_alive_timeout_seconds,
            metrics_folder=folder / "metrics",
            ready_marker=folder / "ready",
            embedded_database=development,
            ready_message=_ready_message(
                served_url(args.host, port),
                generated_secret=development and settings.better_auth_secret is None,
                origins=origins,
                data_dir=args.data_dir,
            ),
        )


def _refuse_migrating_another_database(settings: Settings) -> None:
    if settings.migration_database_url is None or settings.database_url is None:
        return
    refuse_migrating_another_database(
        _readable(settings.migration_database_url.get_secret_value(), "MIGRATION_DATABASE_URL"),
        _readable(settings.database_url.get_secret_value(), "DATABASE_URL"),
        settings.db_connect_timeout_seconds,
    )


def _migration_setting(settings: Settings) -> str:
    """The variable the URL to migrate comes from, for a failure to name."""
    return "DATABASE_URL" if settings.migration_database_url is None else "MIGRATION_DATABASE_URL"


@contextmanager
def _migration_url(settings: Settings, data_dir: Path | None) -> Iterator[str]:
    """MIGRATION_DATABASE_URL (the schema's owner) when set; otherwise what serve uses."""
    if settings.migration_database_url is None:
        with _database_url(settings, data_dir) as url:
            yield url
        return
    yield _readable(settings.migration_database_url.get_secret_value(), "MIGRATION_DATABASE_URL")


def _role_name(value: str) -> str:
    """argparse's check of --login-role: an empty name would otherwise mean "no role" in silence."""
    if not value.strip():
        raise argparse.ArgumentTypeError("a role name cannot be empty or white space alone")
    return value


def migrate(args: argparse.Namespace) -> None:
    # Before anything is migrated or created: no database could make such a name fit.
    if args.login_role and (why := unusable_login_role_name(args.login_role)) is not None:
        raise CommandFailed(
            # Escaped and quoted: the space or control character it is refused for shows.
            f"refusing --login-role {args.login_role!a}: {why}. Name a new role instead (say --login-role "
            "todo_login); nothing was changed"
        )
    settings = _settings()
    _refuse_migrating_another_database(settings)
    setting = _migration_setting(settings)
    with _migration_url(settings, args.data_dir) as url:
        _output(f"todo-api: {_migrate(url, settings, setting)}")
        # Made whatever is left: docs/operations.md's restore and password rotation rely on it.
        if args.login_role:
            _output(f"todo-api: {create_login_role(url, args.login_role, settings, setting)}")
        # `serve` runs the whole isolation check (`check_database`) right after its own migrate.
        asyncio.run(refuse_what_migrating_left(url, settings.db_connect_timeout_seconds, setting))


def token(args: argparse.Namespace) -> None:
    settings = _settings()
    if settings.better_auth_secret is not None:
        secret = settings.better_auth_secret.get_secret_value()
    elif settings.database_url is not None:
        raise CommandFailed(
            "BETTER_AUTH_SECRET is not set: set it (32 or more characters) to mint tokens for DATABASE_URL"
        )
    else:
        # The secret of the embedded database that serves there, never a new one: a token signed with
        # a secret no server holds would only be refused.
        data_dir = args.data_dir or settings.data_dir
        development = embedded.existing_development_secret(data_dir)
        if development is None:
            raise CommandFailed(
                f"no secret to sign with: set BETTER_AUTH_SECRET (the one your server uses), or run this "
                f"where `todo-api serve` keeps its embedded database (none in {data_dir}; see --data-dir)"
            )
        secret = development
    _output(
        mint_token(
            secret,
            args.user_id,
            email=args.email,
            name=args.name,
            ttl_seconds=args.ttl,
            issuer=settings.expected_issuer,
            audience=settings.expected_audience,
        )
    )


# `policies` exits 1 on any finding, with the report on standard output; an audit that did not run to
# its report (a setting, the database out of reach, a lock held past the audit's lock_timeout) exits
# 2, as a misuse does, so that a deployment gate can tell "isolation is weakened" from "audit again".
AUDIT_NOT_RUN = 2


def policies(args: argparse.Namespace) -> None:
    """Print the isolation audit; exit 1 on any finding, so it can gate a deployment, and
    AUDIT_NOT_RUN when there is no audit to print."""
    from api.ops.policy_audit import (
        AuditIncomplete,
        audit_database,
        running_from_a_checkout,
        write_expected_reach,
    )
    from api.ops.policy_report import render_json, render_text

    if args.write_expected:
        if args.json or args.data_dir is not None:
            # It reads no database and prints no report: either option would be ignored in silence.
            args.command_parser.error("--write-expected takes neither --json nor --data-dir")
        if not running_from_a_checkout():
            # A misuse, as argparse's exit status says of one: nothing is started or written.
            print(
                "todo-api: --write-expected is a developer command: run it from a checkout of the "
                "repository, where it rewrites sql/checks/expected_reach.json for you to commit",
                file=sys.stderr,
            )
            sys.exit(2)
        if not embedded.installed():
            raise CommandFailed(embedded.write_expected_install_hint())
        written = display_path(write_expected_reach())
        _output(f"todo-api: wrote {written} from a freshly migrated database")
        return
    settings = _settings()
    with _database_url(settings, args.data_dir, to_audit=True) as url:
        try:
            audit = audit_database(url, connect_timeout_seconds=settings.db_connect_timeout_seconds)
        except AuditIncomplete as incomplete:
            raise CommandFailed(str(incomplete)) from None
        except psycopg.OperationalError as error:
            raise database_failure(error, url) from None
    _output(render_json(audit) if args.json else render_text(audit))
    if audit.findings:
        sys.exit(1)


def openapi(args: argparse.Namespace) -> None:
    """Print the OpenAPI document this version serves: the contract clients are generated from."""
    from api.app import openapi_document

    _output(json.dumps(openapi_document(), indent=2, sort_keys=True))


def _whole_number(value: str, lowest: int, highest: int, what: str) -> int:
    """argparse's type for a number in a range, saying what is wanted rather than `invalid int value`."""
    if not (value.isascii() and value.isdigit()) or not lowest <= int(value) <= highest:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
    return int(value)


def _data_dir(value: str) -> Path:
    """argparse's type for --data-dir: an empty one (`--data-dir "$UNSET"`) is Path("."), which kept
    the database, its secret and its lock in the working directory itself. `~` is expanded as in
    DATA_DIR: no shell expands it in `--data-dir=~/todo-data`, which made a folder named `~` in the
    working directory (the verification probe of stop 85), one `rm -rf ~` takes for the home folder."""
    if not value:
        raise argparse.ArgumentTypeError("an empty folder name: name a folder, or leave --data-dir out")
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~name of no user, or no home to be found
        raise argparse.ArgumentTypeError(
            f"{Path(value).parts[0]} is a home folder that cannot be found"
        ) from None


def _host(value: str) -> str:
    """argparse's type for --host: an empty one (`--host "$UNSET"`) was looked up as a name, or taken
    for an address beyond loopback, after the settings were read."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "an empty host: name an address (0.0.0.0 for all of this machine's), or leave --host out"
        )
    return value


def _port(value: str) -> int:
    return _whole_number(value, 0, 65535, "a TCP port (0 to 65535)")


# Far more than a machine has cores, and far fewer than granian can count: past its limits it panics
# (a Rust "capacity overflow") after the embedded Postgres started, and leaves it running.
_MOST_WORKERS = 512


def _workers(value: str) -> int:
    return _whole_number(value, 1, _MOST_WORKERS, f"1 to {_MOST_WORKERS} worker processes")


# A token's exp must be a date before the year 10000 to be accepted (api/auth/verification.py).
_LONGEST_TOKEN_SECONDS = 100 * 365 * 24 * 3600


def _token_lifetime(value: str) -> int:
    return _whole_number(
        value, 1, _LONGEST_TOKEN_SECONDS, f"1 to {_LONGEST_TOKEN_SECONDS} seconds (100 years)"
    )


def _claim_text(value: str) -> str:
    """argparse's type for text a token carries: a byte the locale cannot decode (`$'\\xff'`) is a lone
    surrogate to Python, and the API refuses a token holding one (api/auth/verification.py)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not UTF-8 text (check the terminal's encoding): the API refuses a token "
            "whose claims are not"
        ) from None
    return value


def _user_id(value: str) -> str:
    """A subject the API accepts (api/auth/principal.py), which a path can name: never a token that
    could only be refused."""
    _claim_text(value)
    try:
        principal_from_claims({"sub": value})
    except InvalidToken as refused:
        raise argparse.ArgumentTypeError(str(refused)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="todo-api",
        description="A multi-user Todo API whose security lives in Postgres row-level security. "
        "Run it, set up its database, mint a development token, or audit isolation.",
        epilog="Configuration comes from the environment or a .env file; see .env.example.",
    )
    parser.add_argument("--version", action="version", version=f"todo-api {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run the API", description="Run the API.")
    serve_parser.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="address or host name to listen on (default: 127.0.0.1)",
    )
    serve_parser.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port to listen on; 0 for a free one, announced (default: 8000)",
    )
    serve_parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help=f"worker processes, 1 to {_MOST_WORKERS}; one per core serves best (default: 1)",
    )
    serve_parser.add_argument(
        "--migrate",
        action="store_true",
        help="apply migrations first, as `todo-api migrate` does, to MIGRATION_DATABASE_URL, else "
        "DATABASE_URL (default: off; always on for the embedded database)",
    )
    serve_parser.add_argument("--data-dir", type=_data_dir, help=_DATA_DIR_HELP)
    serve_parser.set_defaults(run=serve)

    migrate_parser = commands.add_parser(
        "migrate",
        help="apply migrations and policies",
        description="Apply sql/migrations, then sql/policies, as MIGRATION_DATABASE_URL's role (the "
        "schema's owner; default DATABASE_URL).",
    )
    migrate_parser.add_argument("--data-dir", type=_data_dir, help=_DATA_DIR_HELP)
    migrate_parser.add_argument(
        "--login-role",
        metavar="NAME",
        type=_role_name,
        help="also create NAME, the login role to serve as: LOGIN NOINHERIT NOBYPASSRLS, owning nothing, "
        "member of todo_app only (its password is DATABASE_URL's when DATABASE_URL names it, an existing "
        "role's too); an existing role keeps its other attributes, and is refused when it is todo_app, a "
        "superuser, has BYPASSRLS, owns anything in the database or cannot log in; a name "
        "starting with pg_, one SQL reserves (public, current_user, ...) or over 63 bytes is refused "
        "(default: none)",
    )
    migrate_parser.set_defaults(run=migrate)

    token_parser = commands.add_parser(
        "token",
        help="print a signed development token",
        description="Print an HS256 token signed with BETTER_AUTH_SECRET (or the embedded one's secret).",
    )
    token_parser.add_argument(
        "user_id", type=_user_id, help="the token's subject: the user id in /api/{user_id}/tasks"
    )
    token_parser.add_argument("--email", type=_claim_text, help="the token's email claim (default: none)")
    token_parser.add_argument("--name", type=_claim_text, help="the token's name claim (default: none)")
    token_parser.add_argument(
        "--ttl", type=_token_lifetime, default=3600, help="lifetime in seconds (default: 3600)"
    )
    token_parser.add_argument("--data-dir", type=_data_dir, help=_DATA_DIR_HELP)
    token_parser.set_defaults(run=token)

    policies_parser = commands.add_parser(
        "policies",
        help="audit roles, RLS, policies, grants and drift; exit 1 on any finding",
        description="Audit the database's isolation; exit 1 on any finding, 2 when it could not audit.",
    )
    policies_parser.add_argument(
        "--json", action="store_true", help="print the audit as JSON (default: text)"
    )
    policies_parser.add_argument("--data-dir", type=_data_dir, help=_DATA_DIR_HELP)
    policies_parser.add_argument(
        "--write-expected",
        action="store_true",
        help="in a checkout of the repository, regenerate sql/checks/expected_reach.json (what the "
        "isolation check expects todo_app to reach) from a throwaway, freshly migrated embedded database, "
        "after a migration or a policy file changed it; no database setting is read (default: off)",
    )
    policies_parser.set_defaults(run=policies)

    openapi_parser = commands.add_parser(
        "openapi",
        help="print the OpenAPI document (no database needed)",
        description="Print the OpenAPI document this version serves, as JSON.",
    )
    openapi_parser.set_defaults(run=openapi)
    for command_parser in commands.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized:
        # parse_args would refuse a command's unknown option as the top level's, under the top level's
        # usage, which names none of the command's options: `todo-api: error: ... --bogus`.
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unrecognized)}")
    if args.command is None:
        parser.print_help()
        return
    command_is_serve(args.command == "serve")
    stop_quietly_on_signals()
    try:
        args.run(args)
    except KeyboardInterrupt:  # a Ctrl-C that arrived before the handler was set, or in a library's own
        sys.exit(130)
    except RuntimeError as error:
        if isinstance(error.__cause__, SystemExit):
            # Python 3.11 wraps what `__set_name__` raises while a class is made: a stop that landed
            # as an import made one (psycopg_pool's dataclasses, which serve imports late) is the stop.
            raise error.__cause__ from None
        raise
    except BrokenPipeError:
        # The reader went away (`todo-api openapi | head -c1`): nothing to say, as for any Unix tool.
        _stdout_to_devnull()
        sys.exit(1)
    except (CommandFailed, SqlFilesMissing) as failure:
        if args.command == "serve":
            logger.error("todo-api: %s", failure)
            sys.exit(1)
        if args.command == "policies":
            print(f"todo-api: {failure}", file=sys.stderr)
            sys.exit(AUDIT_NOT_RUN)
        sys.exit(f"todo-api: {failure}")


if __name__ == "__main__":
    main()
