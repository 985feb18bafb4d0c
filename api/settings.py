"""The one settings object: every knob the API reads from the environment (or a `.env` file)."""

import io
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import SplitResult, urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

# HS256 with a short secret can be brute-forced offline from one captured token.
MIN_SECRET_LENGTH = 32
# How long any connection (serve's, migrate's, the audit's) waits for a server to answer; libpq's own
# default is to wait forever on a host that accepts the connection and then says nothing.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5
# Postgres's integer (the statement timeout, the task quota and a task's version are stored in one)
# and bigint (task and event ids).
POSTGRES_INT_MAX = 2**31 - 1
POSTGRES_BIGINT_MAX = 2**63 - 1
# The most connections a worker's pool may hold, and so the most one user may hold of it.
POOL_SIZE_LIMIT = 200
# The most event streams a worker may hold, and so the most one user may hold on it.
STREAMS_PER_WORKER_LIMIT = 100_000
# The longest any wait or interval measured in seconds may be (a request's wait for a connection or
# for its body, a connection's for the server, the heartbeat of a stream): beyond it the wait outlasts
# any client or proxy, and a request hangs where an answer was due.
WAIT_SECONDS_LIMIT = 300

# Where settings are read from besides the environment; `todo-api` reads it first (env_file_names), for
# misspelt names, and to refuse one that cannot be read whole.
ENV_FILE = ".env"


class EnvFileError(ValueError):
    """A .env that is there but cannot be read whole. pydantic-settings skips a folder or a dangling
    link in silence, and python-dotenv a line it cannot parse with a log line that names no setting:
    a command would then run on other settings than the ones written (a new embedded database in
    place of DATABASE_URL's, say). `str()` is the whole message: the cause and the fix."""


_LINE_BREAK = re.compile(r"\r\n|\n|\r")

# The text of each .env that is a named pipe (a secrets manager may serve one), by its device and
# inode: a pipe gives its text to one reader, and a second read (the settings after the check, each
# worker after serve) waited for ever for a writer that had gone.
_piped_text: dict[tuple[int, int], str] = {}


def _env_file_text(path: Path) -> str:
    """The text of the .env at `path`, read from a named pipe at most once per process (a worker
    forked by serve inherits what serve read)."""
    status = path.stat()
    if not stat.S_ISFIFO(status.st_mode):
        return path.read_text(encoding="utf-8")
    identity = (status.st_dev, status.st_ino)
    if identity not in _piped_text:
        _piped_text[identity] = path.read_text(encoding="utf-8")
    return _piped_text[identity]


def env_file_names() -> list[str]:
    """The names .env sets (none when there is no .env), read by python-dotenv's parser, the one
    pydantic-settings reads it with; EnvFileError when any of it cannot be read."""
    path = Path(ENV_FILE)
    try:
        path.lstat()
    except FileNotFoundError:
        return []
    except OSError as error:
        # A folder its user cannot search: after `su` or `sudo -u` typed in /root, say, which keep it.
        raise EnvFileError(
            f"cannot look for {ENV_FILE} in {Path.cwd()} ({error.strerror}): run todo-api from a "
            "folder you can read"
        ) from None
    if path.is_symlink() and not path.exists():
        raise EnvFileError(
            f"{ENV_FILE} is a symbolic link to {path.readlink()}, which leads to no file: "
            f"fix the link, or remove {ENV_FILE}"
        )
    if not path.exists():
        return []
    if path.is_dir():
        raise EnvFileError(
            f"{ENV_FILE} is a folder, not a file: settings are read from a file of that name; "
            "move the folder away"
        )
    if not (path.is_file() or path.is_fifo()):
        # A device or a socket: pydantic-settings skips it in silence, and /dev/zero never ends.
        raise EnvFileError(
            f"{ENV_FILE} is neither a file nor a named pipe: settings are read from a file of that "
            "name; move it away"
        )
    try:
        bindings = list(parse_stream(io.StringIO(_env_file_text(path))))
    except UnicodeDecodeError:
        raise EnvFileError(f"{ENV_FILE} is not UTF-8 text: save it as UTF-8, or remove it") from None
    except OSError as error:
        raise EnvFileError(f"cannot read {ENV_FILE} ({error.strerror}): fix it, or remove it") from None
    if unparsed := [
        _where_unparsed(binding.original.string, binding.original.line)
        for binding in bindings
        if binding.error
    ]:
        raise EnvFileError(
            f"{ENV_FILE} cannot be parsed at {', '.join(unparsed)}: a quote left open, or text after "
            f"the closing one? Fix it, or remove {ENV_FILE}"
        )
    return [binding.key for binding in bindings if binding.key is not None]


def _where_unparsed(statement: str, line: int) -> str:
    """`line N (NAME)`: the line a statement python-dotenv could not parse starts on (its count starts
    at the blank lines before it), and the name it sets when that much is plain; never its value,
    which may be a password."""
    text = statement.lstrip()
    line += len(_LINE_BREAK.findall(statement[: len(statement) - len(text)]))
    words = text.partition("=")[0].split()
    if words[:1] == ["export"]:
        words = words[1:]
    named = len(words) == 1 and words[0].isidentifier()
    return f"line {line} ({words[0]})" if named else f"line {line}"


class _EnvFileSource(PydanticBaseSettingsSource):
    """The .env's values, its text read through `_env_file_text`: a source of the kind pydantic-settings'
    docs teach ("Adding sources"), for its own .env source reads the file as it is built. Names match
    fields in any case and empty values count as unset, as with the environment."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: Path | None) -> None:
        super().__init__(settings_cls)
        values: dict[str, str | None] = {}
        # Anything else at that name (a folder, a device) is `env_file_names`' to refuse.
        if env_file is not None and (env_file.is_file() or env_file.is_fifo()):
            values = dotenv_values(stream=io.StringIO(_env_file_text(env_file)))
        self._values = {name.lower(): value for name, value in values.items() if value}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {name: self._values[name] for name in fields if name in self._values}


def _blank_or_control(url: str) -> bool:
    """Whether a URL setting has white space or a control character in it: a space left at an end
    goes into every use of it, where nothing matches or resolves it."""
    return any(character.isspace() or not character.isprintable() for character in url)


def serialized_origin(url: SplitResult) -> str:
    """`url`'s origin as the URL standard writes it (`new URL(url).origin`, a browser's Origin header):
    scheme and host in lower case, the host in punycode, no default port. UnicodeError for a host
    IDNA cannot encode; ValueError for a port that is not one."""
    hostname = (url.hostname or "").encode("idna").decode("ascii")
    host = f"[{hostname}]" if ":" in hostname else hostname
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    port = "" if url.port in (None, default_port) else f":{url.port}"
    return f"{url.scheme}://{host}{port}"


def _origin_as_browsers_send_it(origin: str) -> str | None:
    """The origin a browser would send for `origin` (a trailing slash allowed), or None when it is not
    scheme://host[:port]."""
    try:
        url = urlsplit(origin)
        if not url.scheme or url.path not in ("", "/") or url.query or url.fragment:
            return None
        if "://" not in origin or not url.hostname:
            return None
        return serialized_origin(url)
    except (UnicodeError, ValueError):  # ValueError: a bracketed host that is no IPv6 address, too
        return None


def _in_any_case(words: Any) -> BeforeValidator:
    """For a setting whose value is one of `words` (a Literal): that value in any case, as its word.
    `LOG_FORMAT=JSON` and `DB_PREPARED_STATEMENTS=ON` were refused where `LOG_LEVEL=debug` was taken."""
    by_lower = {word.lower(): word for word in get_args(words)}

    def as_word(value: object) -> object:
        return by_lower.get(value.lower(), value) if isinstance(value, str) else value

    return BeforeValidator(as_word)


LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
LogFormat = Literal["json", "text"]
PreparedStatements = Literal["auto", "on", "off"]


class LogSettings(BaseSettings):
    """How to log, readable alone: `todo-api serve` reads these first, so that a mistake in any other
    setting is logged as they ask."""

    # Empty values count as unset, so a copied .env.example with blanks means "use the defaults".
    # Every number is finite: infinity passed `gt=0` and was a wait that never ended, or a 500 where it
    # became an integer (a Retry-After); NaN is refused as what it is rather than as out of range.
    # No file for pydantic-settings' own .env source, which reads it as it is built, before any
    # settings_customise_sources: a named pipe would be read by it and again by the CLI's check.
    # `_EnvFileSource` reads ENV_FILE instead.
    model_config = SettingsConfigDict(
        env_file=(),
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        allow_inf_nan=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `_env_file=` given (None: no .env) names the file; left out, it is the config's (), read
        # here as ENV_FILE.
        given = getattr(dotenv_settings, "env_file", None)
        env_file = Path(ENV_FILE) if given == () else None if given is None else Path(given)
        env_file_settings = _EnvFileSource(settings_cls, env_file=env_file)
        return (init_settings, env_settings, env_file_settings, file_secret_settings)

    # The levels Python's logging and granian both know, in any case.
    log_level: Annotated[LogLevel, _in_any_case(LogLevel)] = "INFO"
    # json: one JSON object per line; text: lines for people. Default: text at a terminal, else json.
    log_format: Annotated[LogFormat | None, _in_any_case(LogFormat)] = None


def read_log_settings() -> LogSettings:
    """LOG_LEVEL and LOG_FORMAT, each read alone: the default of one that is itself the mistake
    (which reading `Settings` names), the other as given. A .env that cannot be read (which reading
    `Settings` names too) is left unread: the environment's alone."""
    try:
        env_file_names()
    except EnvFileError:
        env_file = None
    else:
        env_file = ()  # the default: ENV_FILE, read once
    try:
        return LogSettings(_env_file=env_file)
    except ValidationError as error:
        mistaken = {str(problem["loc"][0]) for problem in error.errors() if problem["loc"]}
        defaults = {name: LogSettings.model_fields[name].default for name in mistaken}
    try:
        return LogSettings(_env_file=env_file, **defaults)  # given here, a value outranks the environment's
    except ValidationError:
        return LogSettings.model_construct()


class Settings(LogSettings):
    """Every setting: how to log, and the rest."""

    database_url: SecretStr | None = Field(
        default=None,
        description="Postgres to serve from. Unset: start the embedded development database.",
    )
    migration_database_url: SecretStr | None = Field(
        default=None,
        description="Postgres to migrate as the schema's owner (todo-api migrate). Unset: DATABASE_URL.",
    )
    better_auth_secret: SecretStr | None = Field(
        default=None, description="Shared secret for HS256 tokens, at least 32 characters."
    )
    better_auth_url: str | None = Field(
        default=None,
        description="Better Auth's base URL, as Better Auth reads it: its JWKS is at /api/auth/jwks (or "
        "{path}/jwks when it has a path); tokens' iss and aud must equal its origin.",
    )
    better_auth_jwks_url: str | None = Field(
        default=None, description="Where the public keys are, when not where BETTER_AUTH_URL says."
    )
    jwt_issuer: str | None = Field(
        default=None, description="Expected iss, instead of BETTER_AUTH_URL's origin."
    )
    jwt_audience: str | None = Field(
        default=None, description="Expected aud, instead of BETTER_AUTH_URL's origin."
    )
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # At most one JWKS fetch per this many seconds for tokens naming a key we do not hold.
    jwks_refetch_cooldown_seconds: float = Field(default=30.0, ge=0, le=3600)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    db_pool_size: int = Field(default=10, ge=1, le=POOL_SIZE_LIMIT)
    # Connections of a worker's pool one user may hold at once (default: a quarter of the pool, at
    # least 1); their further requests wait for one within DB_POOL_TIMEOUT_SECONDS, then get 429, or
    # 503 while the user's own requests are still waiting for a connection and the pool has none idle
    # (`api.db.fair_share`).
    db_max_connections_per_user: int | None = Field(default=None, ge=1, le=POOL_SIZE_LIMIT)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=WAIT_SECONDS_LIMIT)
    db_connect_timeout_seconds: int = Field(
        default=DEFAULT_CONNECT_TIMEOUT_SECONDS, ge=1, le=WAIT_SECONDS_LIMIT
    )
    # auto: statements are prepared (SQL PREPARE, once per connection) on connections that reach
    # Postgres itself, never through a pooler; on: on every connection (a pooler in session mode);
    # off: never. serve refuses on (and DB_PREPARE_THRESHOLD) with a pooler it finds passing
    # sessions between clients. See api/db/prepared.py.
    db_prepared_statements: Annotated[PreparedStatements, _in_any_case(PreparedStatements)] = "auto"
    # Set: statements travel pipelined and psycopg prepares them at the protocol level after this
    # many executions, for a pooler that keeps such statements (PgBouncer 1.21+ with
    # max_prepared_statements, Neon's pooled endpoint); DB_PREPARED_STATEMENTS then does not apply.
    db_prepare_threshold: int | None = Field(default=None, ge=0, le=1000)
    # Per transaction: a runaway query cannot hold a connection (and a user's requests) for longer.
    db_statement_timeout_ms: int = Field(default=5000, ge=100, le=POSTGRES_INT_MAX)
    # Requests one user may make per minute, per worker (a token bucket); 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=600, ge=0, le=1_000_000)
    # How often each worker re-runs the isolation check while it serves; at most an hour, since a
    # worker that found a problem refuses task requests until the next check (its Retry-After).
    isolation_check_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    # With true, a PUT, PATCH or DELETE without If-Match is refused with 428.
    require_if_match: bool = False
    # How long a create's Idempotency-Key is remembered, in hours.
    # At least a second: a lifetime that rounds to nothing breaks the keys' lifetime check (a 500).
    idempotency_ttl_hours: float = Field(default=24.0, ge=1 / 3600, le=24 * 30)
    # Tasks one user may have; the database refuses the INSERT past it (409 task-limit-reached).
    max_tasks_per_user: int = Field(default=10_000, ge=1, le=POSTGRES_INT_MAX)
    # Live changes (GET /api/{user_id}/events, api/events). How long events are kept for a stream to
    # resume from; an older Last-Event-ID gets `event: reset`.
    events_retention_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    # Open streams one user may hold per worker; the next gets 429.
    max_streams_per_user: int = Field(default=5, ge=1, le=STREAMS_PER_WORKER_LIMIT)
    # Open streams of all users one worker may hold; the next gets 503. The worker accepts this many
    # connections and 4096 more at once (api/ops/server.py), so streams never take every one.
    max_streams_per_worker: int = Field(default=1000, ge=1, le=STREAMS_PER_WORKER_LIMIT)
    # A comment line this often keeps proxies from closing an idle stream.
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, le=WAIT_SECONDS_LIMIT)
    # Where the worker LISTENs for wake-ups: a URL that reaches Postgres itself (Neon: the URL
    # without -pooler). Unset, or reaching a pooler (warned, not used): DATABASE_URL, when it reaches
    # Postgres itself; else streams poll.
    database_direct_url: SecretStr | None = None
    # How often each stream polls for events when no LISTEN connection can be had.
    events_poll_milliseconds: int = Field(default=1000, ge=50, le=60_000)
    # Request bodies beyond this are refused with 413 before they are read in full.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Requests one user may have in flight at once, per worker, counted from the moment their token
    # is verified (before the body is read); past it, 429. Default: see `requests_in_flight_per_user`.
    max_requests_in_flight_per_user: int | None = Field(default=None, ge=1, le=10_000)
    # Seconds a request body may take to arrive in full once the API reads it (or, having answered
    # from the head, throws it away: api/http/body_limit.py); past it, 408 and the connection is
    # closed (the head's own limit is granian's: api/ops/server.py).
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=WAIT_SECONDS_LIMIT)
    # Seconds a client may take no part of an answer before it is cut off: a piece of a large answer
    # (api/http/slow_readers.py) or an event of a stream (api/events/routes.py).
    send_timeout_seconds: float = Field(default=30.0, gt=0, le=WAIT_SECONDS_LIMIT)
    # Seconds a connection may wait for a whole request head: a keep-alive connection between its
    # requests, or one that connected and sent nothing (granian's header_read_timeout, one timer for
    # both). Behind a load balancer that keeps connections to the API open longer (nginx's upstream
    # keepalive_timeout, 60 s; Google Cloud's, 600 s), it closed one just as the balancer sent a
    # request on it, and the balancer answered 502 (the proxy probe, /tmp/s79-proxy).
    keep_alive_timeout_seconds: int = Field(default=10, ge=1, le=3600)

    data_dir: Path = Field(
        default_factory=lambda: Path.cwd() / ".data",
        description="Embedded Postgres data folder, when DATABASE_URL is unset (default: .data here).",
    )
    # On SIGTERM, requests in flight get this long to finish before their worker is killed.
    shutdown_grace_seconds: int = Field(default=30, ge=1, le=24 * 3600)
    # GET /metrics in the Prometheus text format, without a token: expose it only to the scraper.
    metrics_enabled: bool = True
    # With the otel extra installed: export traces over OTLP/HTTP to this collector (base URL), or to
    # the traces URL, which OpenTelemetry's exporters take in its place when both are set.
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def origins_as_browsers_send_them(cls, origins: list[str]) -> list[str]:
        # The Origin header is compared as text: an origin written any other way (a trailing slash,
        # a default port, a capital) never matches, and its browser is refused in silence.
        for origin in origins:
            if origin == "*":
                continue
            if "@" in origin.partition("://")[2].partition("/")[0]:  # never repeated: it may hold a password
                raise ValueError("CORS_ORIGINS: an origin has a user name in it: browsers send none")
            sent = _origin_as_browsers_send_it(origin)
            if sent == origin:
                continue
            form = f"write {sent}" if sent else "an origin is scheme://host[:port], with no path"
            # Escaped when it holds a line break (a list one origin a line) or another control
            # character: the one line said would otherwise be cut in two.
            shown = origin if origin.isprintable() else repr(origin)
            raise ValueError(f"CORS_ORIGINS: {shown} is not an origin as browsers send it: {form}")
        return origins

    @field_validator("data_dir")
    @classmethod
    def home_expanded(cls, value: Path) -> Path:
        # A .env, or a container's environment, is no shell: DATA_DIR=~/todo-data there made a folder
        # named `~` in the working directory, which `rm -rf ~` then took for the home folder.
        try:
            return value.expanduser()
        except RuntimeError:  # ~name of no user, or no home to be found
            raise ValueError(
                f"DATA_DIR starts with {value.parts[0]}, a home folder that cannot be found"
            ) from None

    @field_validator("database_url", "migration_database_url", "better_auth_secret", "database_direct_url")
    @classmethod
    def utf8_text(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Bytes the locale cannot decode reach a secret as lone surrogates, which pydantic refuses in a
        # plain string but lets through here, and which failed later as a traceback when the secret was
        # encoded. Never quoted: it may be a password.
        if value is not None:
            try:
                value.get_secret_value().encode()
            except UnicodeEncodeError:
                name = (info.field_name or "").upper()
                raise ValueError(f"{name} is not UTF-8 text: set it again, written in UTF-8") from None
        return value

    @field_validator("better_auth_secret")
    @classmethod
    def secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_LENGTH} characters long")
        return value

    @field_validator("better_auth_url")
    @classmethod
    def better_auth_base_url(cls, value: str | None) -> str | None:
        # The JWKS location is this URL with a path appended: after a query or fragment that path
        # would name another resource, and a user name and password would travel to it (and into logs).
        if not value:
            return None
        # A backslash is a slash to Better Auth's URL parser (WHATWG), and not to ours.
        if any(mark in value for mark in "?#\\") or urlsplit(value).username is not None:
            raise ValueError(
                "BETTER_AUTH_URL must be Better Auth's base URL, without a query, fragment, backslash or "
                "user name: "
                "its origin (https://app.example.com), or the path Better Auth is mounted on "
                "(https://app.example.com/auth); set BETTER_AUTH_JWKS_URL for keys elsewhere, and "
                "JWT_ISSUER and JWT_AUDIENCE for other iss and aud"
            )
        return value.rstrip("/")

    @field_validator("better_auth_url", "better_auth_jwks_url")
    @classmethod
    def keys_over_https(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Whoever can change the keys in transit can sign in as anyone; plain HTTP only on this machine.
        if value is None:
            return None
        name = (info.field_name or "").upper()
        # A space left at an end went into the keys' URL and the expected iss and aud
        # ("https://app.example.com "), which no token carries: every token was refused, after start-up.
        if _blank_or_control(value):
            raise ValueError(
                f"{name} has white space or a control character in it (a space at its start or end?): "
                "remove it"
            )
        url = urlsplit(value)
        loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError(f"{name} must be an https:// URL (http:// only for localhost)")
        try:
            port_readable = url.port is None or url.port > 0
        except ValueError:  # not a number, or past 65535
            port_readable = False
        if not url.hostname or not port_readable:
            raise ValueError(
                f"{name} must name a host (and any port from 1 to 65535): https://app.example.com"
            )
        return value

    @field_validator("jwt_issuer", "jwt_audience")
    @classmethod
    def claim_as_tokens_carry_it(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Compared with each token's iss or aud as text: a space or a line break left at an end (a
        # secret made with `echo`) matched no token, and every one was refused, after start-up. White
        # space inside is left alone: an issuer may be any string.
        if value is not None and (value != value.strip() or not value.isprintable()):
            name = (info.field_name or "").upper()
            raise ValueError(
                f"{name} has white space at its start or end, or a control character in it: remove it"
            )
        return value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def collector_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The exporter reads it only when it first sends, in the background: a value that is no URL
        # served without traces, each batch's failure logged.
        if not value:
            return None
        name = (info.field_name or "").upper()
        url = urlsplit(value)
        try:
            port_readable = url.port is None or url.port > 0
        except ValueError:  # not a number, or past 65535
            port_readable = False
        if (
            url.scheme not in ("http", "https")
            or not url.hostname
            or not port_readable
            or _blank_or_control(value)
        ):
            raise ValueError(
                f"{name} must be the collector's OTLP/HTTP URL, http:// or https:// and a host (any port "
                "from 1 to 65535), with no white space: http://localhost:4318"
            )
        return value

    @property
    def max_connections_per_user(self) -> int:
        share = self.db_max_connections_per_user or max(1, self.db_pool_size // 4)
        return min(share, self.db_pool_size)

    @property
    def requests_in_flight_per_user(self) -> int:
        # Sixteen times the user's share of the pool (32 with the default pool). Requests past the
        # share wait for it (up to DB_POOL_TIMEOUT_SECONDS) and a transaction takes milliseconds, so
        # a burst of a few dozen (a client syncing in parallel, several tabs) is still served, not
        # refused; yet one user's slow bodies hold at most this many of a worker's connections (it
        # accepts MAX_STREAMS_PER_WORKER + 4096 at once: api/ops/server.py), each for at most
        # BODY_TIMEOUT_SECONDS, and at most this many of its answers left unread.
        return self.max_requests_in_flight_per_user or 16 * self.max_connections_per_user

    @property
    def jwks_url(self) -> str | None:
        """Where Better Auth publishes its public keys, if anywhere."""
        if self.better_auth_jwks_url is not None:
            return self.better_auth_jwks_url
        if self.better_auth_url is None:
            return None
        # As Better Auth reads its own BETTER_AUTH_URL: a path there is where its routes are mounted,
        # instead of its default basePath, /api/auth.
        if urlsplit(self.better_auth_url).path:
            return f"{self.better_auth_url}/jwks"
        return f"{self.better_auth_url}/api/auth/jwks"

    @property
    def better_auth_origin(self) -> str | None:
        """What Better Auth puts in iss and aud by default: `new URL(baseURL).origin`, whatever the path."""
        if self.better_auth_url is None:
            return None
        return serialized_origin(urlsplit(self.better_auth_url))

    @property
    def expected_issuer(self) -> str | None:
        return self.jwt_issuer or self.better_auth_origin

    @property
    def expected_audience(self) -> str | None:
        return self.jwt_audience or self.better_auth_origin

    def missing_token_source(self) -> str | None:
        """Why no token could be verified, if so. Only serving needs a key source: migrating and
        auditing a database do not, and the embedded development database makes its own secret."""
        if self.better_auth_secret is None and self.jwks_url is None:
            return (
                "BETTER_AUTH_URL (or BETTER_AUTH_JWKS_URL) or BETTER_AUTH_SECRET is required to serve "
                "DATABASE_URL: without one no token can be verified"
            )
        return None
