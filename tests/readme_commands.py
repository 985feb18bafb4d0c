"""The commands README.md tells people to run: every line of its `sh` and `bash` blocks (`bash` where
a line needs it, as the install's `<(...)` does), as tests run them.

A command continued over several lines (a trailing backslash) is one command; a comment after it
(` # ...`) is the README's explanation, not part of it.
"""

import re
import shutil
import subprocess
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
    """The project as a newcomer clones it: the files git tracks, and new ones not yet committed (so
    that a change is tried before it lands), none that .gitignore keeps out: no virtualenv, no data,
    nothing built. Not the folder less a list of names: such a list missed `.venv-oldest`, the
    virtualenv .ci/run makes while these tests run."""
    git = shutil.which("git")
    assert git is not None, "the tests run in a clone of the repository, with git installed"
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = PROJECT / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted, and not yet committed
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / name, follow_symlinks=False)  # api/sql stays a link
    return destination
