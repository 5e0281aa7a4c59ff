"""Browser-test fixtures: the built page, a server on the demo model, Chromium."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    DEFAULT_ASYNC_MODE,
    ROOT,
    Relay,
    ServerProcess,
    free_port,
    relay_env,
)

# Debian's chromium package (scripts/install_packages.sh); Playwright downloads nothing.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """client/web/dist, built (or found up to date) by scripts/build_web.sh."""
    subprocess.run([str(ROOT / "scripts" / "build_web.sh")], check=True)
    return ROOT / "client" / "web" / "dist"


def serve_page(
    tmp_session: Path, web_dist: Path, name: str, env: dict[str, str]
) -> Iterator[str]:
    """Run the service (python wsgi.py) on the demo model, serving the built page, in
    the default async mode with ``env``; yield its URL, then stop it."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "wsgi.py"],
        {
            "ASYNC_MODE": DEFAULT_ASYNC_MODE,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LLM_PROVIDER": "demo",
            "WEB_DIST_DIR": str(web_dist),
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        tmp_session / f"{name}-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + "/healthz")
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def web_url(web_dist, tmp_session) -> Iterator[str]:
    """The service on the demo model, paced slowly enough to watch."""
    yield from serve_page(
        tmp_session,
        web_dist,
        "web",
        {
            "DEMO_TTFT": "0.2",
            "DEMO_TOKENS_PER_SECOND": "40",
            # Every page connects from 127.0.0.1, so the whole run is one identity to
            # the per-client limits; these tests are not about those limits.
            "CHATS_PER_MINUTE": "1000",
            "MAX_STREAMS_PER_IDENTITY": "100",
            "HANDSHAKES_PER_MINUTE": "10000",
        },
    )


@pytest.fixture(scope="module")
def relay_url(web_dist, tmp_session, upstream) -> Iterator[str]:
    """A module's own relay in front of the test server, serving the page, with the
    default message size (room for the page's images); a stalled upstream and a
    reload get all the time they need."""
    relay = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        relay_env(
            upstream,
            WEB_DIST_DIR=str(web_dist),
            UPSTREAM_READ_TIMEOUT="60",
            RESUME_GRACE_SECONDS="30",
        ),
    )
    yield relay.url
    relay.process.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright; fails loudly if either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: install requirements-dev.txt",
            pytrace=False,
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/install_packages.sh "
            "(installs Debian's chromium package)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


# Reports each violation of the page's Content-Security-Policy as a console error;
# added to every page before its own scripts run (Playwright's init scripts are
# exempt from the policy).
_REPORT_CSP_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', (event) => {
  console.error(`CSP violation: ${event.effectiveDirective} refused `
    + `${event.blockedURI || 'inline'} at ${event.sourceFile}:${event.lineNumber}`);
}, true);
"""


@pytest.fixture(autouse=True)
def csp_violations(browser, monkeypatch) -> Iterator[list[str]]:
    """The Content-Security-Policy violations of every page the test opens, in any
    context made by ``browser.new_context``; the test fails if there are any."""
    violations: list[str] = []
    new_context = browser.new_context

    def watched_context(*args, **kwargs):
        context = new_context(*args, **kwargs)
        context.add_init_script(script=_REPORT_CSP_VIOLATIONS)
        context.on(
            "console",
            lambda message: (
                violations.append(message.text)
                if message.text.startswith("CSP violation:")
                else None
            ),
        )
        return context

    monkeypatch.setattr(browser, "new_context", watched_context)
    yield violations
    assert not violations, f"the page broke its Content-Security-Policy: {violations}"


@pytest.fixture
def new_page(browser, web_url):
    """Opens pages (a path on the demo server, or any absolute URL), each in a new
    context unless given one; fails on page errors."""
    contexts = []
    errors: list[str] = []

    def open_page(path: str = "/", context=None, **context_options):
        if context is None:
            options = {"viewport": {"width": 1100, "height": 800}, **context_options}
            context = browser.new_context(**options)
            contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path if "://" in path else web_url + path)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """artifacts/ (git-ignored), for screenshots a person can look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
