"""What the requests of an app share is one typed object, stored and read in one place each.

Starlette's `app.state` reads any name untyped: a name misspelt there fails a request, not mypy.
`create_app` stores the one `Services` (api/http/services.py), and `services(app)` is what reads it.
"""

import re

from tests.test_layers import PACKAGE

_STORES_THEM = PACKAGE / "app.py"
_READS_THEM = PACKAGE / "http" / "services.py"


def test_app_state_is_touched_only_where_services_are_stored_and_read() -> None:
    touching = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in (_STORES_THEM, _READS_THEM)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bapp\.state\b", line)
    ]
    assert touching == [], "read services(request.app) instead"
