"""`todo-api serve | migrate | token | policies`: run the API, set up a database, mint a development
token, audit isolation."""

import argparse
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import uvicorn
from pydantic import ValidationError

from api.auth.dev_tokens import mint_token
from api.ops import embedded
from api.ops.migrations import apply_migrations
from api.ops.policy_audit import audit_database
from api.ops.policy_report import render_json, render_text
from api.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "\n".join(f"  - {e['msg']}" for e in error.errors())
        sys.exit(f"todo-api: invalid configuration:\n{problems}")


@contextmanager
def _database_url(settings: Settings, data_dir: Path | None) -> Iterator[str]:
    """DATABASE_URL when set; otherwise the embedded database, stopped again on the way out."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    database = embedded.start(data_dir or settings.data_dir)
    # uvicorn re-raises SIGTERM after its graceful shutdown, which would kill us before the wheel's
    # atexit hook stops Postgres; turning it into SystemExit lets the finally below run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        embedded.export_environment(database)
        yield database.url
    finally:
        database.stop()


def _print_welcome(host: str, port: int, secret_is_generated: bool) -> None:
    base = f"http://{host}:{port}"
    lines = [f"todo-api: serving on {base} (docs: {base}/docs)"]
    if secret_is_generated:
        lines += [
            "Development mode: embedded Postgres and a generated secret. Get a token and try it:",
            "  TOKEN=$(todo-api token alice)",
            f'  curl -H "Authorization: Bearer $TOKEN" {base}/api/alice/tasks',
        ]
    print("\n".join(lines), flush=True)


def serve(args: argparse.Namespace) -> None:
    settings = _settings()
    development = settings.database_url is None
    if not development and (missing := settings.missing_token_source()):
        sys.exit(f"todo-api: invalid configuration:\n  - {missing}")
    with _database_url(settings, args.data_dir) as url:
        if development or args.migrate:
            applied = apply_migrations(url)
            print(f"todo-api: migrations applied: {', '.join(applied) or 'none pending'}; policies refreshed")
        _print_welcome(args.host, args.port, development and settings.better_auth_secret is None)
        uvicorn.run(
            "api.ops.worker:create_served_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            proxy_headers=True,
        )


def migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    with _database_url(settings, args.data_dir) as url:
        applied = apply_migrations(url)
    print(f"todo-api: migrations applied: {', '.join(applied) or 'none pending'}; policies refreshed")


def token(args: argparse.Namespace) -> None:
    settings = _settings()
    if settings.better_auth_secret is not None:
        secret = settings.better_auth_secret.get_secret_value()
    elif settings.database_url is None:
        secret = embedded.development_secret(args.data_dir or settings.data_dir)
    else:
        sys.exit("todo-api: set BETTER_AUTH_SECRET to mint tokens")
    print(
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


def policies(args: argparse.Namespace) -> None:
    """Print the isolation audit; exit 1 on any finding, so it can gate a deployment."""
    settings = _settings()
    with _database_url(settings, args.data_dir) as url:
        try:
            audit = audit_database(url)
        except psycopg.OperationalError as error:
            sys.exit(f"todo-api: cannot audit the database: {error}")
    print(render_json(audit) if args.json else render_text(audit))
    if audit.findings:
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="todo-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data_dir_help = "embedded Postgres folder when DATABASE_URL is unset (default: .data)"

    serve_parser = commands.add_parser("serve", help="run the API")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--workers", type=int, default=1)
    serve_parser.add_argument("--migrate", action="store_true", help="apply migrations to DATABASE_URL first")
    serve_parser.add_argument("--data-dir", type=Path, help=data_dir_help)
    serve_parser.set_defaults(run=serve)

    migrate_parser = commands.add_parser("migrate", help="apply migrations and policies")
    migrate_parser.add_argument("--data-dir", type=Path, help=data_dir_help)
    migrate_parser.set_defaults(run=migrate)

    token_parser = commands.add_parser("token", help="print a signed development token")
    token_parser.add_argument("user_id")
    token_parser.add_argument("--email")
    token_parser.add_argument("--name")
    token_parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token_parser.add_argument("--data-dir", type=Path, help=data_dir_help)
    token_parser.set_defaults(run=token)

    policies_parser = commands.add_parser(
        "policies", help="audit roles, RLS, policies, grants and drift; exit 1 on any finding"
    )
    policies_parser.add_argument("--json", action="store_true", help="print the audit as JSON")
    policies_parser.add_argument("--data-dir", type=Path, help=data_dir_help)
    policies_parser.set_defaults(run=policies)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = _parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
