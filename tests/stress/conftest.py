"""Hypothesis keeps caches on disk even with `database=None`: keep them out of the checkout."""

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "todo-api-hypothesis")
