"""What the docs say about the code, checked against the code where a test can do it cheaply.

- docs/security.md's table of the tables `todo_app` can reach agrees with sql/policies/ (which
  tables, which commands have a policy, their SQL tests) and with a migrated database (unique and
  foreign keys, whose checks look past row-level security);
- docs/extending.md lists the floors of `api/` in the order tests/test_layers.py enforces, and
  every module of each package it describes file by file;
- every file, folder and test the docs name exists, and a test named in parentheses after its file
  (`tests/x.py` (`test_y`)) is defined in that file;
- a name the docs place in a Python file (`NAME` in `api/x.py`, `Name` (`api/x.py`)) is defined
  there, so a checklist step does not send a reader to a constant or function renamed since;
- docs/architecture.md names every middleware the app installs, and its picture draws them in the
  order a request meets them; it names every setting the role switch makes in each transaction and
  every exception the database layer raises, and shows its picture;
- README.md's shape of a task is the fields the API answers with, its list's limits are the list's,
  and its threat model names every path an anonymous client can reach;
- the TypeScript client's README copies every file of its src/ and installs what package.json pins;
- every row of every table has as many cells as its header (a cell beyond them is not shown).
"""

import ast
import html
import json
import re
from itertools import takewhile
from pathlib import Path
from typing import Any

import psycopg
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, Route

from api.app import create_app
from api.db import errors as database_errors
from api.db.statements import ACT_AS_USER
from api.http.caller import AuthenticatedRoute
from api.tasks.listing import PAGE_SIZE, PAGE_SIZE_MAX, SEARCH_MAX_LENGTH
from api.tasks.models import TaskPublic
from tests.support import PROJECT, settings_for
from tests.test_layers import FLOORS

DOCS = sorted((PROJECT / "docs").glob("*.md"))
README = PROJECT / "README.md"
SECURITY = PROJECT / "docs" / "security.md"
ARCHITECTURE = PROJECT / "docs" / "architecture.md"
POLICIES = PROJECT / "sql" / "policies"

_REACHABLE_TABLES = "## The tables `todo_app` can reach"
_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Names in the docs' worked examples of what a developer would add: not files of this repository.
_EXAMPLES = re.compile(r"tags|due_at|NNNN")


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of each body row of the first table after `heading`."""
    _, found, section = text.partition(f"\n{heading}\n")
    assert found, f"no '{heading}' section"
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def _key_columns(cell: str) -> set[tuple[str, ...]]:
    """`(user_id, key)` and `(id)` in a cell: each key's columns, in order."""
    return {tuple(column.strip() for column in key.split(",")) for key in re.findall(r"`\(([^)]*)\)`", cell)}


def documented_tables() -> dict[str, dict[str, Any]]:
    tables = {}
    for table, owner, commands, unique, foreign, sql_test in _table_rows(
        SECURITY.read_text(encoding="utf-8"), _REACHABLE_TABLES
    ):
        tables[table.strip("`")] = {
            "owner": owner.strip("`"),
            "commands": {command.strip() for command in commands.split(",")},
            "unique": _key_columns(unique),
            "foreign": _key_columns(foreign),
            "sql_test": sql_test.strip("`"),
        }
    return tables


def policy_files() -> dict[str, set[str]]:
    """The table each file in sql/policies/ is for, and the commands it has a policy for."""
    found = {}
    for path in sorted(POLICIES.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        (table,) = re.findall(r"CALL app\.drop_all_policies\('([^']+)'\)", text)
        found[table] = set(re.findall(r"^\s*FOR (SELECT|INSERT|UPDATE|DELETE|ALL)\b", text, re.MULTILINE))
    return found


def test_security_md_lists_every_table_with_policies_and_only_those() -> None:
    documented, files = documented_tables(), policy_files()
    assert files, "the search found no policy file"
    missing, extra = sorted(files.keys() - documented.keys()), sorted(documented.keys() - files.keys())
    assert not missing, f"add a row for {missing} to '{_REACHABLE_TABLES}' in docs/security.md"
    assert not extra, f"docs/security.md lists {extra}, which no file in sql/policies/ is for"


def test_security_md_names_the_commands_each_table_has_a_policy_for() -> None:
    documented = documented_tables()
    for table, commands in policy_files().items():
        assert documented[table]["commands"] == commands, f"{table}: the policies are for {sorted(commands)}"


def test_security_md_names_each_tables_sql_test() -> None:
    for table, facts in documented_tables().items():
        assert facts["sql_test"] == f"sql/tests/{table.removeprefix('public.')}.sql"
        assert (PROJECT / facts["sql_test"]).is_file()


_KEYS = """
select c.conrelid::regclass::text, c.contype::text,
       array(select a.attname::text
             from unnest(c.conkey) with ordinality as k(attnum, position)
             join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
             order by k.position)
from pg_constraint c
where c.contype in ('p', 'u', 'f') and c.conrelid = any(%s::regclass[])
union all
-- A unique index made without a constraint checks every row just the same.
select i.indrelid::regclass::text, 'u',
       array(select a.attname::text
             from unnest(i.indkey::int2[]) with ordinality as k(attnum, position)
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
             order by k.position)
from pg_index i
where i.indisunique and i.indrelid = any(%s::regclass[])
  and not exists (select from pg_constraint c where c.conindid = i.indexrelid)
"""


def test_security_md_names_every_unique_and_foreign_key(migrated_db: psycopg.Connection[Any]) -> None:
    documented = documented_tables()
    tables = sorted(documented)
    live: dict[str, dict[str, set[tuple[str, ...]]]] = {
        t: {"unique": set(), "foreign": set()} for t in tables
    }
    for table, kind, columns in migrated_db.execute(_KEYS, [tables, tables]).fetchall():
        live[table if "." in table else f"public.{table}"]["foreign" if kind == "f" else "unique"].add(
            tuple(columns)
        )
    for table in tables:
        described = {"unique": documented[table]["unique"], "foreign": documented[table]["foreign"]}
        assert described == live[table], (
            f"{table} in docs/security.md's table, against the database: {live[table]}"
        )


def _named_paths(document: Path, text: str) -> set[Path]:
    """Repository paths a document names: in backticks (from the project's root), or as a relative
    Markdown link (from the document's folder)."""
    quoted = re.findall(r"`((?:api|sql|tests|docs|bench|clients|\.ci)/[\w./*-]*)`", text)
    linked = re.findall(r"\]\((?!https?:|#|mailto:)([^)#\s]+)", text)
    named = [PROJECT / path for path in quoted] + [document.parent / path for path in linked]
    return {path for path in named if not _EXAMPLES.search(str(path))}


def _exists(path: Path) -> bool:
    return any(path.parent.glob(path.name)) if "*" in path.name else path.exists()


def test_every_path_the_docs_name_exists() -> None:
    missing = [
        f"{document.relative_to(PROJECT)} names {path.resolve().relative_to(PROJECT)}"
        for document in (*DOCS, README)
        for path in sorted(_named_paths(document, document.read_text(encoding="utf-8")))
        if not _exists(path)
    ]
    assert not missing, "\n".join(missing)


_NAMED_TEST = re.compile(r"`(test_\w+\*?)`")
# A test file followed by the tests of it that prove the line: `tests/x.py` (`test_a`, `test_b`).
_FILE_AND_ITS_TESTS = re.compile(r"`(tests/[\w/]+\.py)` \(([^)]*)\)")


def _defined_tests(source: str) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)", source, re.MULTILINE))


def _is_defined(named: str, defined: set[str]) -> bool:
    """`test_x` names one test; `test_x*` any test whose name starts so."""
    if named.endswith("*"):
        return any(name.startswith(named.removesuffix("*")) for name in defined)
    return named in defined


def test_every_test_the_docs_name_exists() -> None:
    defined = _defined_tests(_all_test_sources())
    missing = []
    for document in (*DOCS, README):
        for named in _NAMED_TEST.findall(document.read_text(encoding="utf-8")):
            if not _is_defined(named, defined):
                missing.append(f"{document.relative_to(PROJECT)} names {named}, which no test file defines")
    assert not missing, "\n".join(missing)


def test_every_test_named_beside_its_file_is_in_that_file() -> None:
    misplaced = []
    for document in (*DOCS, README):
        for path, names in _FILE_AND_ITS_TESTS.findall(document.read_text(encoding="utf-8")):
            source = PROJECT / path
            if not source.is_file():
                continue  # test_every_path_the_docs_name_exists reports it
            defined = _defined_tests(source.read_text(encoding="utf-8"))
            misplaced += [
                f"{document.relative_to(PROJECT)} names {named} as a test of {path}, which does not define it"
                for named in _NAMED_TEST.findall(names)
                if not _is_defined(named, defined)
            ]
    assert not misplaced, "\n".join(misplaced)


def test_the_test_finder_pairs_each_file_with_the_tests_after_it() -> None:
    text = "`tests/a.py` (`test_x`, `test_y*`), `tests/b.py`, `tests/c/d.py` (each case)"
    assert _FILE_AND_ITS_TESTS.findall(text) == [
        ("tests/a.py", "`test_x`, `test_y*`"),
        ("tests/c/d.py", "each case"),
    ]
    assert _is_defined("test_y*", {"test_yes"})
    assert not _is_defined("test_y", {"test_yes"})


# A name, then the file it is in: `A` in `api/x.py`, `A` and `B` in `tests/x.py`, or `A` (`api/x.py`).
# A dotted name counts only as `Class.member`: `request.headers` (`api/...`) says where it is read.
_NAMES_AND_THEIR_FILE = re.compile(
    r"((?:`[A-Za-z_]\w*(?:\.\w+)?`(?:, | and | or )?)+)(?: in |\s\()`((?:api|tests|bench)/[\w/]+\.py)`"
)


def _placed_names(text: str) -> list[tuple[str, str]]:
    """Each (name, file) the text places the name in."""
    return [
        (name, path)
        for names, path in _NAMES_AND_THEIR_FILE.findall(re.sub(r"\s+", " ", text))
        for name in re.findall(r"`([^`]+)`", names)
        if "." not in name or name[0].isupper()
    ]


def _names_bound_by(node: ast.AST) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {target.id for target in targets if isinstance(target, ast.Name)}
    return set()


def _defined_names(source: str) -> set[str]:
    """Functions, classes and assigned names anywhere in the module, and each class's as `Class.x`."""
    defined: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        defined |= _names_bound_by(node)
        if isinstance(node, ast.ClassDef):
            defined |= {f"{node.name}.{name}" for member in node.body for name in _names_bound_by(member)}
    return defined


def test_every_name_the_docs_place_in_a_file_is_defined_there() -> None:
    misplaced = []
    for document in (*DOCS, README):
        for name, path in _placed_names(document.read_text(encoding="utf-8")):
            source = PROJECT / path
            if source.is_file() and name not in _defined_names(source.read_text(encoding="utf-8")):
                misplaced.append(f"{document.relative_to(PROJECT)} places {name} in {path}, which lacks it")
    assert not misplaced, "\n".join(misplaced)


def test_the_name_finder_pairs_each_name_with_its_file() -> None:
    text = (
        "add it to `ROUTERS` in `api/app.py`, `WRITTEN` and `CHANGED` in\n`tests/x.py`; "
        "`Database.run` (`api/db/database.py`), read from `request.headers` (`api/http/conditional.py`)"
    )
    assert _placed_names(text) == [
        ("ROUTERS", "api/app.py"),
        ("WRITTEN", "tests/x.py"),
        ("CHANGED", "tests/x.py"),
        ("Database.run", "api/db/database.py"),
    ]
    assert {"Database", "Database.run", "ROUTERS"} <= _defined_names(
        "class Database:\n    async def run(self): ...\nROUTERS: tuple = ()\n"
    )


def _all_test_sources() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted((PROJECT / "tests").rglob("*.py")))


def test_extending_md_lists_the_floors_in_their_order() -> None:
    text = (PROJECT / "docs" / "extending.md").read_text(encoding="utf-8")
    _, found, section = text.partition("\n## The floors of `api/`\n")
    assert found
    block = section.split("```")[1]
    listed = [
        line.split()[0].removeprefix("api/").rstrip("/").removesuffix(".py")
        for line in block.splitlines()
        if line.startswith("api/")
    ]
    floors = [name for name in listed if name != "settings"]
    assert floors == list(FLOORS), f"docs/extending.md's floors, highest first, should be {FLOORS}"


def test_architecture_md_names_every_middleware_the_app_installs() -> None:
    # Wherever a module installs one, not only api/app.py.
    installed = [
        name
        for module in sorted((PROJECT / "api").rglob("*.py"))
        for name in re.findall(r"add_middleware\(\s*(\w+)", module.read_text(encoding="utf-8"))
    ]
    assert "HeadAsGet" in installed
    assert len(installed) >= 3, "the search found too few middleware to mean anything"
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [name for name in installed if f"`{name}`" not in text]
    assert not missing, f"docs/architecture.md (its picture and a paragraph) should name {missing}"


def _labels_on_the_way_in() -> list[str]:
    """The first line of each label along docs/request-path.dot's edge chain from the client."""
    source = (ARCHITECTURE.parent / "request-path.dot").read_text(encoding="utf-8")
    labels = dict(re.findall(r'^\s*(\w+) \[label="([^"\\]+)', source, re.MULTILINE))
    (chain,) = [line for line in source.splitlines() if line.strip().startswith("client ->")]
    return [labels[node] for node in re.findall(r"\w+", chain) if node in labels]


def test_architecture_md_draws_the_middleware_in_the_order_a_request_meets_them() -> None:
    """The page and its picture say "outermost first"; an app with every middleware (CORS too) runs
    them in that order. Each is named by its class or one it extends (Starlette's `CORSMiddleware`
    for `ProblemCORSMiddleware`)."""
    app = create_app(settings_for("postgresql://nobody@/nowhere", cors_origins=["https://app.example"]))
    # Starlette keeps `user_middleware` outermost first.
    names = []
    for middleware in app.user_middleware:
        assert isinstance(middleware.cls, type)
        names.append([cls.__name__ for cls in middleware.cls.__mro__])
    assert len(names) >= 5, "the search found too few middleware to mean anything"
    drawn = [label for label in _labels_on_the_way_in() if any(label in mro for mro in names)]
    installed = [next((name for name in mro if name in drawn), mro[0]) for mro in names]
    assert drawn == installed, (
        "docs/request-path.dot (and the page's paragraph) should draw them in this order"
    )


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a `## ` line), up to the next heading of its level."""
    _, found, rest = text.partition(f"\n{heading}\n")
    assert found, f"no '{heading}' section"
    return rest.split("\n## ", 1)[0]


def test_architecture_md_names_every_setting_the_role_switch_makes() -> None:
    """What each transaction sets before its statement is what row-level security and the triggers
    read: the page that walks a request through Database.run says all of it, by name."""
    made = re.findall(r"set_config\('([^']+)'", str(ACT_AS_USER))
    assert {"role", "app.user_id"} <= set(made), "the search found too few settings to mean anything"
    section = _section(
        ARCHITECTURE.read_text(encoding="utf-8"), "## Database.run: the one transaction helper"
    )
    missing = [name for name in made if f"`{name}`" not in section]
    assert not missing, f"docs/architecture.md, 'Database.run', should name {missing} (ACT_AS_USER sets them)"


def test_architecture_md_names_every_exception_the_database_layer_raises() -> None:
    """api/db/errors.py is what the database layer tells the layers above; the page follows each one
    to the answer it becomes."""
    raised = [
        name
        for name, value in vars(database_errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == database_errors.__name__
    ]
    assert len(raised) >= 5, "the search found too few exceptions to mean anything"
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [name for name in raised if f"`{name}`" not in text]
    assert not missing, f"docs/architecture.md should name {missing} (api/db/errors.py raises them)"


def test_architecture_md_shows_its_picture_and_how_to_remake_it() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    (image,) = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", text)
    svg = ARCHITECTURE.parent / image
    source = svg.with_suffix(".dot")
    assert svg.is_file()
    assert source.is_file()
    assert f"dot -Tsvg {source.relative_to(PROJECT)} -o {svg.relative_to(PROJECT)}" in text
    # The picture was drawn from this source: every label of the source is in it.
    labels = re.findall(r'label="([^"\\]+)', source.read_text(encoding="utf-8"))
    drawn = "\n".join(
        html.unescape(line) for line in re.findall(r"<text[^>]*>([^<]*)</text>", svg.read_text())
    )
    assert labels
    stale = [label for label in labels if label.strip() not in drawn]
    assert not stale, f"{svg.name} is older than {source.name} ({stale}): draw it again as the page says"


def test_the_path_finder_sees_quoted_and_linked_paths_but_not_examples() -> None:
    text = "`api/app.py`, [ops](operations.md), `sql/policies/tags.sql`, [x](https://e.org/a.md), `api/`"
    assert _named_paths(SECURITY, text) == {
        PROJECT / "api/app.py",
        SECURITY.parent / "operations.md",
        PROJECT / "api",
    }


def test_readme_names_every_field_of_a_task_in_order() -> None:
    shape = re.search(r"^- A task: `\{([^}]*)\}`", README.read_text(encoding="utf-8"), re.MULTILINE)
    assert shape is not None, "README.md's 'A task:' line"
    assert [field.strip() for field in shape.group(1).split(",")] == list(TaskPublic.model_fields)


def test_readme_gives_the_lists_own_limits() -> None:
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert f"`q` (up to {SEARCH_MAX_LENGTH} characters," in readme
    assert f"`limit` (default {PAGE_SIZE}, at most {PAGE_SIZE_MAX})" in readme


def _paths_served_without_a_caller() -> set[str]:
    """Every path the app answers without admitting a caller: what a client without a token can reach."""
    app = create_app(settings_for("postgresql://nobody@/nowhere", metrics_enabled=True))
    routes = [context.route for context in iter_route_contexts(app.routes)]
    return {
        route.path
        for route in routes
        if isinstance(route, Route | Mount) and not isinstance(route, AuthenticatedRoute)
    }


def test_readme_names_every_path_an_anonymous_client_can_reach() -> None:
    """The threat model's "nothing else" is a promise a security review reads literally."""
    found = re.search(
        r"^\*\*An anonymous client\*\*(.*?); nothing else\.",
        README.read_text(encoding="utf-8"),
        re.DOTALL | re.MULTILINE,
    )
    assert found is not None, "README.md's paragraph on an anonymous client"
    named = set(re.findall(r"`(/[^`]*)`", found.group(1)))
    served = _paths_served_without_a_caller()
    assert {"/healthz", "/openapi.json"} <= served, "the search missed paths it should find"
    assert named == served


def _floor_modules_named() -> dict[str, set[str]]:
    """Each package line of docs/extending.md's floors, with the modules (`x.py`) it names."""
    text = (PROJECT / "docs" / "extending.md").read_text(encoding="utf-8")
    block = text.partition("\n## The floors of `api/`\n")[2].split("```")[1]
    named: dict[str, set[str]] = {}
    package = ""
    for line in block.splitlines():
        if line.startswith("api/"):
            package = line.split()[0]
            named[package] = set()
        if package.endswith("/"):
            named[package] |= set(re.findall(r"\b(\w+)\.py\b", line))
    return named


def test_extending_md_names_each_module_of_the_packages_it_describes_by_file() -> None:
    wrong = []
    for package, modules in _floor_modules_named().items():
        if not modules:
            continue  # described by what it does, not file by file
        present = {path.stem for path in (PROJECT / package).glob("*.py")} - {"__init__"}
        wrong += [f"{package}{name}.py is named but does not exist" for name in sorted(modules - present)]
        wrong += [f"{package}{name}.py exists but is not named" for name in sorted(present - modules)]
    assert not wrong, "docs/extending.md's floors:\n" + "\n".join(wrong)


def test_the_typescript_readme_copies_every_source_file_and_installs_every_dependency() -> None:
    """An app that copies the client's files instead of installing the package (clients/typescript/
    README.md) needs every file of src/, which import one another, and the exact runtime dependencies
    package.json pins."""
    client = PROJECT / "clients" / "typescript"
    text = (client / "README.md").read_text(encoding="utf-8")
    found = re.search(r"\(Or copy (.*?) into your app and\s+`npm install ([^`]*)`", text, re.DOTALL)
    assert found is not None, "clients/typescript/README.md's copy-instead-of-install paragraph"
    copied = set(re.findall(r"`(src/[^`]+)`", found.group(1)))
    assert copied == {f"src/{path.name}" for path in (client / "src").glob("*.ts")}
    dependencies = json.loads((client / "package.json").read_text(encoding="utf-8"))["dependencies"]
    assert set(found.group(2).split()) == {f"{name}@{version}" for name, version in dependencies.items()}


def _cells(row: str) -> int:
    """The cells of a Markdown table row: its pipes, less the outer two, not counting those in code
    spans or escaped."""
    return re.sub(r"`[^`]*`|\\\|", "", row).count("|") - 1


def test_every_table_row_has_as_many_cells_as_its_header() -> None:
    """A row with a cell more is drawn without it: the threat model's slow-bodies row once showed no
    evidence, its tests having slid into the next row's third cell (the docs probe of stop 80)."""
    uneven = []
    for document in [README, *DOCS]:
        lines = document.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not (
                line.startswith("|")
                and number + 1 < len(lines)
                and re.match(r"\|\s*:?-{3}", lines[number + 1])
            ):
                continue
            header = _cells(line)
            for offset, row in enumerate(takewhile(lambda row: row.startswith("|"), lines[number + 2 :])):
                if _cells(row) != header:
                    uneven.append(
                        f"{document.name}:{number + 3 + offset}: {_cells(row)} cells, header {header}"
                    )
    assert uneven == []


def test_the_cell_counter_leaves_pipes_in_code_and_escaped_ones_out() -> None:
    assert _cells("| a | `x | y` | b \\| c |") == 3
