"""The page against a server that refuses its connection: it says why, retries a full
server until there is room, and stops at a refusal that retrying cannot fix."""

import http.client
import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from .conftest import serve_page
from .pages import wait_connected


@pytest.fixture
def few_seats(tmp_session, web_dist) -> Iterator[str]:
    """python wsgi.py taking two connections in all, and one per user."""
    yield from serve_page(
        tmp_session,
        web_dist,
        "one-seat",
        {"MAX_CONNECTIONS": "2", "MAX_CONNECTIONS_PER_IDENTITY": "1"},
    )


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
