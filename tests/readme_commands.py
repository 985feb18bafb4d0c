"""The commands README.md tells people to run: every line of its `sh` and `bash` blocks (`bash` where
a line needs it, as the install's `<(...)` does), as tests run them.

A command continued over several lines (a trailing backslash) is one command; a comment after it
(` # ...`) is the README's explanation, not part of it.
"""

import re
import shutil
import textwrap
from pathlib import Path

from tests.support import PROJECT

README = PROJECT / "README.md"

_SH_BLOCK = re.compile(r"^( *)```(?:sh|bash)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"\s+#\s.*$")


def readme_commands() -> list[str]:
    commands = []
    for match in _SH_BLOCK.finditer(README.read_text()):
        joined = textwrap.dedent(match.group(2)).replace("\\\n", " ")
        for line in joined.splitlines():
            command = _COMMENT.sub("", line).strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def commands_starting(prefix: str) -> list[str]:
    found = [command for command in readme_commands() if command.startswith(prefix)]
    assert found, f"README.md has no command starting {prefix!r}"
    return found


def copy_of_the_checkout(destination: Path) -> Path:
    """The project as a newcomer clones it: no virtualenv, no data, nothing built."""
    shutil.copytree(
        PROJECT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".data", ".env", "dist", "node_modules", ".cache", "__pycache__",
            ".mypy_cache", ".ruff_cache", ".pytest_cache", "results",
        ),
    )  # fmt: skip
    return destination
