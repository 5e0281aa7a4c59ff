"""The page against a server that refuses its connection: it says why, retries a full
server until there is room, and stops at a refusal that retrying cannot fix."""

import http.client
import json
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.conftest import DEFAULT_ASYNC_MODE, ServerProcess, free_port

from .pages import wait_connected


@pytest.fixture
def few_seats(tmp_session, web_dist) -> Iterator[str]:
    """python wsgi.py taking two connections in all, and one per user."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "wsgi.py"],
        {
            "ASYNC_MODE": DEFAULT_ASYNC_MODE,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LLM_PROVIDER": "demo",
            "MAX_CONNECTIONS": "2",
            "MAX_CONNECTIONS_PER_IDENTITY": "1",
            "WEB_DIST_DIR": str(web_dist),
            "PYTHONUNBUFFERED": "1",
        },
        tmp_session / f"one-seat-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(url + "/healthz")
        yield url
    finally:
        server.stop()


def polling_session(url: str, method: str = "GET", sid: str | None = None) -> str:
    """Open an Engine.IO session without a browser (or, given ``sid``, close it)."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    path = "/socket.io/?EIO=4&transport=polling" + (f"&sid={sid}" if sid else "")
    conn.request(method, path, body=b"1" if sid else None)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200, body
    return json.loads(body[1:])["sid"] if sid is None else ""


def test_full_server_is_shown_and_retried_until_a_seat_frees(browser, few_seats):
    seats = [polling_session(few_seats) for _ in range(2)]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(few_seats)
        notice = page.get_by_test_id("connection-notice")
        expect(notice).to_have_text("The server is full. Retrying…")
        expect(page.get_by_test_id("connection-state")).to_have_attribute(
            "data-state", "reconnecting"
        )
        polling_session(few_seats, "POST", seats[0])
        # socket.io-client's own backoff brings it in once the seat is free.
        wait_connected(page)
        expect(notice).to_have_count(0)

        # The one connection a user may hold is this page's: a second tab is told
        # why, and stops there, since retrying cannot help.
        polling_session(few_seats, "POST", seats[1])
        second = context.new_page()
        second.goto(few_seats)
        expect(second.get_by_test_id("connection-notice")).to_have_text(
            "Too many connections from your address. Close other tabs of this page, "
            "then reload."
        )
        expect(second.get_by_test_id("connection-state")).to_have_attribute(
            "data-state", "refused"
        )
    finally:
        context.close()
