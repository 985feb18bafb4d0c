"""Every setting is documented twice, and both agree with the one settings object.

`api.settings.Settings` is where a setting lives (its environment variable is the field's name in
upper case); README.md's settings table (under "## Configuration") and `.env.example` are where an
operator reads about it. These tests fail naming each variable that one side has and another lacks,
and say where to add or remove it.
"""

import math
import re
from fractions import Fraction
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from pydantic import TypeAdapter, ValidationError

from api.settings import Settings
from tests.support import PROJECT, SECRET

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


def _numeric_settings() -> list[str]:
    numbers = (int, float, int | None, float | None)
    return sorted(name for name, info in Settings.model_fields.items() if info.annotation in numbers)


def _bounds(field: str) -> tuple[float, float | None]:
    """The least and the most value the field allows (the most None when nothing bounds it)."""
    low: float = -math.inf
    high: float | None = None
    for limit in Settings.model_fields[field].metadata:
        for name in ("ge", "gt"):
            if getattr(limit, name, None) is not None:
                low = getattr(limit, name)
        for name in ("le", "lt"):
            if getattr(limit, name, None) is not None:
                high = getattr(limit, name)
    return low, high


def _readme_row(text: str, variable: str) -> str:
    _, _, section = text.partition(f"\n{_SECTION}\n")
    rows = [line for line in section.splitlines() if line.startswith("|") and f"`{variable}`" in line]
    assert rows, f"README.md's settings table has no row for {variable}"
    return rows[0]


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _numbers(row: str) -> set[float]:
    """Every number the row writes: 10,000 as 10000, 1/3600 as a fraction."""
    return {float(Fraction(number.replace(",", ""))) for number in _NUMBER.findall(row)}


@pytest.mark.parametrize("field", _numeric_settings())
def test_a_number_setting_is_finite_and_bounded_and_the_readme_says_its_range(field: str) -> None:
    # Infinity or a huge value was accepted and failed while serving: a request that waited forever,
    # a 500 (an OverflowError) on every task request, a Retry-After of 300 digits.
    low, high = _bounds(field)
    assert high is not None, f"{field.upper()} has no upper bound: give its Field an le= in api/settings.py"
    for value in ("inf", "nan", "-inf", str(high * 10)):
        with pytest.raises(ValidationError) as refused:
            Settings.model_validate({field: value})
        assert [error["loc"] for error in refused.value.errors()] == [(field,)], value
    row = _readme_row(README.read_text(encoding="utf-8"), field.upper())
    missing = {low, high} - _numbers(row)
    assert not missing, f"README.md's row for {field.upper()} does not say its range ({low} to {high})"


def _word_settings() -> list[tuple[str, str]]:
    """(field, word) for every setting whose value is one of a few words (a Literal)."""
    return sorted(
        (name, word)
        for name, info in Settings.model_fields.items()
        for literal in (info.annotation, *get_args(info.annotation))
        if get_origin(literal) is Literal
        for word in get_args(literal)
    )


@pytest.mark.parametrize(("field", "word"), _word_settings())
def test_a_setting_of_a_few_words_takes_each_in_any_case_and_nothing_else(
    field: str, word: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LOG_LEVEL=debug` was taken but `LOG_FORMAT=JSON` and `DB_PREPARED_STATEMENTS=ON` refused:
    one rule for all of them, read from the environment as `serve` reads it."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@/unused")
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    for written in (word.upper(), word.lower(), word.title()):
        monkeypatch.setenv(field.upper(), written)
        assert getattr(Settings(_env_file=None), field) == word
    monkeypatch.setenv(field.upper(), f"{word}s")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_the_settings_of_a_few_words_are_found() -> None:
    # A guard against parametrising over nothing.
    assert {"log_level", "log_format", "db_prepared_statements"} <= {field for field, _ in _word_settings()}
