"""/docs and /redoc work on a machine without internet access: every script and style comes from the
API itself. A real headless browser, cut off from every host but this one, renders /docs."""

import os
import re
import shutil
import subprocess
import tempfile

import httpx
import pytest

TASK_OPERATIONS = [
    "List your tasks",
    "Create a task",
    "Get one task",
    "Update a task",
    "Delete a task",
    "Complete, reopen or toggle a task",
]


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run should have installed it")
        pytest.skip("chromium is not installed (apt-get install chromium, or run .ci/run as root)")
    return binary


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_nothing_from_another_host(api_url: str, page: str) -> None:
    html = httpx.get(f"{api_url}{page}").text
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
    references += re.findall(r"""(?:url|spec-url)\s*:\s*["']([^"']+)""", html)
    assert references, html
    for reference in references:
        assert reference.startswith("/"), f"{page} refers to {reference}"
    assert "cdn." not in html
    assert "fonts.googleapis" not in html
    for reference in references:
        if reference.startswith("/docs/assets/"):
            assert httpx.get(f"{api_url}{reference}").status_code == 200, reference


def test_a_browser_without_internet_renders_the_operations_and_authorize(api_url: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # Every host but this machine's loopback fails to resolve: a CDN would break the page.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"{api_url}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    for summary in TASK_OPERATIONS:
        assert summary in dom, f"{summary!r} is not rendered"
    assert re.search(r"<button[^>]*authorize[^>]*>.*?Authorize", dom, re.DOTALL | re.IGNORECASE)
