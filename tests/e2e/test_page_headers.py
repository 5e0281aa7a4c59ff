"""The page's security headers, and Chromium holding the page to them: its own
scripts, styles and fonts run, its Socket.IO connects, anything else is refused.
Every other browser test runs under the same policy (``csp_violations``)."""

import urllib.request

import pytest
from playwright.sync_api import expect

from .pages import ask, wait_done

EXPECTED_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "style-src-attr": "'unsafe-inline'",
    "font-src": "'self' data:",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}


@pytest.mark.parametrize("path", ["/", "/demo"])
def test_pages_send_their_security_headers(web_url, path):
    with urllib.request.urlopen(web_url + path, timeout=5) as response:
        headers = response.headers
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in headers["Content-Security-Policy"].split(";")
    )
    assert policy == EXPECTED_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"


def test_assets_are_never_sniffed(web_url):
    with urllib.request.urlopen(web_url + "/", timeout=5) as response:
        page = response.read().decode()
    script = page.split('src="', 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(web_url + script, timeout=5) as response:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Type"].startswith("text/javascript")


def test_the_page_works_under_its_policy_and_refuses_anything_else(
    new_page, csp_violations
):
    # A chat over the page's own WebSocket, within the policy. (Math and highlighted
    # code, with KaTeX's fonts and inline style attributes, are in
    # test_reasoning.py, under the same watch.)
    page = new_page("/")
    with page.expect_websocket() as opened:
        page.reload()
    assert "/socket.io/" in opened.value.url
    answer = ask(page, "Write a table of penguin species and a python code example")
    wait_done(answer)
    expect(answer.locator("table")).to_be_visible()
    expect(answer.locator(".code-block code.hljs")).to_be_visible()
    assert csp_violations == []

    # A script the page did not ship is refused, and the refusal is reported.
    with page.expect_console_message(reported("script-src")):
        ran = page.evaluate(
            """() => {
              const script = document.createElement('script');
              script.textContent = 'window.injected = true';
              document.head.append(script);
              return window.injected === true;
            }"""
        )
    assert ran is False
    # So is a connection to another origin.
    with page.expect_console_message(reported("connect-src")):
        page.evaluate("() => { try { new WebSocket('ws://127.0.0.2:9/') } catch {} }")
    assert len(csp_violations) == 2, csp_violations
    # Expected here, not faults of the page.
    csp_violations.clear()


def reported(directive: str):
    """Matches the console report of a violation of ``directive``."""
    return lambda message: message.text.startswith(f"CSP violation: {directive}")
