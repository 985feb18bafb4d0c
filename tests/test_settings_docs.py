"""Every setting is documented twice, and both agree with the one settings object.

`api.settings.Settings` is where a setting lives (its environment variable is the field's name in
upper case); README.md's settings table (under "## Configuration") and `.env.example` are where an
operator reads about it. These tests fail naming each variable that one side has and another lacks,
and say where to add or remove it.
"""

import re
from typing import Annotated, Any

import pytest
from pydantic import TypeAdapter

from api.settings import Settings
from tests.support import PROJECT

README = PROJECT / "README.md"
ENV_EXAMPLE = PROJECT / ".env.example"
_SECTION = "## Configuration"
_VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")
_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def readme_table_variables(text: str) -> set[str]:
    """The variables named in the first column of the first table after "## Configuration"."""
    _, found, section = text.partition(f"\n{_SECTION}\n")
    assert found, f"README.md has no '{_SECTION}' section"
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:  # the table has ended
            break
    header, _rule, *body = rows
    assert header.split("|")[1].strip() == "variable", "the settings table's first column is not 'variable'"
    return {name for row in body for name in _VARIABLE.findall(row.split("|")[1])}


def env_example_assignments(text: str) -> dict[str, str]:
    """`NAME=value` lines (comments and blank lines aside), by name."""
    found = {}
    for line in text.splitlines():
        if assigned := _ASSIGNMENT.match(line):
            found[assigned[1]] = assigned[2]
    return found


def _disagreement(documented: set[str], where: str, how_to_add: str) -> str:
    """What `where` lacks and what it has too many of, against the settings object; '' if nothing."""
    expected = settings_variables()
    missing, extra = sorted(expected - documented), sorted(documented - expected)
    problems = []
    if missing:
        problems.append(f"{where} lacks {', '.join(missing)}: {how_to_add}.")
    if extra:
        problems.append(
            f"{where} names {', '.join(extra)}, which api.settings.Settings has no field for: "
            "remove them there, or add the field."
        )
    return "\n".join(problems)


def test_every_setting_has_a_row_in_the_readme_table() -> None:
    documented = readme_table_variables(README.read_text(encoding="utf-8"))
    where = f"README.md's settings table (under '{_SECTION}')"
    how = "add a row `| `NAME` | meaning (default ...) |` to that table for each"
    disagreement = _disagreement(documented, where, how)
    assert not disagreement, disagreement


def test_every_setting_has_a_line_in_env_example() -> None:
    documented = set(env_example_assignments(ENV_EXAMPLE.read_text(encoding="utf-8")))
    how = "add a `# what it does` line and `NAME=default` (`NAME=` if it has none) to .env.example for each"
    disagreement = _disagreement(documented, ".env.example", how)
    assert not disagreement, disagreement


_GIVEN = {name: value for name, value in env_example_assignments(ENV_EXAMPLE.read_text()).items() if value}


@pytest.mark.parametrize(("name", "value"), sorted(_GIVEN.items()))
def test_a_value_in_env_example_is_the_default(name: str, value: str) -> None:
    # A copied .env.example must change nothing: a value written there is the default, or blank.
    field = name.lower()
    if field not in Settings.model_fields:
        pytest.skip(f"{name} is not a setting (reported by test_every_setting_has_a_line_in_env_example)")
    # The field's own type and limits read the value, as from the variable, apart from this
    # process's environment.
    info = Settings.model_fields[field]
    field_type: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    read: object = TypeAdapter(field_type).validate_python(value)
    default = info.get_default(call_default_factory=True)
    assert read == default, f".env.example sets {name}={value}, but its default is {default!r}"


def test_the_table_parser_reads_cells_with_several_variables() -> None:
    table = "\n".join(
        (
            "intro",
            "## Configuration",
            "",
            "| variable | meaning |",
            "| --- | --- |",
            "| `A_B`, `C` | `NO` |",
        )
    )
    assert readme_table_variables(table) == {"A_B", "C"}


def test_the_settings_object_is_what_the_docs_are_compared_with() -> None:
    # A guard against comparing two empty sets: the object has the settings every deployment needs.
    assert {"DATABASE_URL", "BETTER_AUTH_URL", "BETTER_AUTH_SECRET"} <= settings_variables()
