"""`api/` is built in floors, and each floor imports only the floors below it (README, "Layout").

Read from the source rather than from `sys.modules`, so an import inside a function counts too.
`api/settings.py` and `api/__init__.py` belong to no floor: every floor may read them.
"""

import ast
import re
from pathlib import Path

import api

# Highest first.
FLOORS = ("ops", "app", "events", "tasks", "http", "auth", "db", "telemetry")
PACKAGE = Path(api.__file__).parent


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "api" and len(parts) > 1 and parts[1] in FLOORS else None


def _imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    return modules


def test_no_floor_imports_a_higher_one() -> None:
    upward = []
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30, "the search found too few modules to mean anything"
    for path in sources:
        module = ".".join(("api", *path.relative_to(PACKAGE).with_suffix("").parts))
        own = _floor(module)
        if own is None:
            continue
        for imported in _imported_modules(path):
            floor = _floor(imported)
            if floor is not None and FLOORS.index(floor) < FLOORS.index(own):
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_every_package_of_api_is_a_floor() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(FLOORS) - {"app"}


def _listed_floors(listing: str) -> set[str]:
    names = re.findall(r"^\s+(\w+)(?:/|\.py)\s", listing, flags=re.MULTILINE)
    return {name for name in names if name in FLOORS}


def test_the_floors_are_each_described_where_the_layout_is() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    assert api.__doc__ is not None
    assert _listed_floors(layout) == set(FLOORS), "README, Layout"
    assert _listed_floors(api.__doc__) == set(FLOORS) - {"ops"}, (
        "api/__init__.py (ops/ is named beside app.py)"
    )


# The embedded database's own bootstrap reaches it by its socket: no host name to look up.
_CONNECTS_BY_SOCKET_ONLY = {"ops/embedded.py"}
_PLAIN_CONNECT = re.compile(r"\bpsycopg\.(?:connect|(?:Async)?Connection\.connect)\(")


def test_every_connection_is_made_with_its_host_name_looked_up_within_the_connect_timeout() -> None:
    """psycopg's own connect looks a host name up with no bound (api/db/host_lookup.py): a module that
    called it would hang as long as a silent name server, where every other one fails in one line."""
    plain = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in _CONNECTS_BY_SOCKET_ONLY
        and _PLAIN_CONNECT.search(path.read_text())
    ]
    assert plain == []
