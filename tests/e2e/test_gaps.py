"""The page fills a chunk lost on its live connection, or says it could not.

A Playwright WebSocket route sits between the page and the server and drops one
``chunk`` frame, as a cross-node delivery lost during a Redis restart would be."""

import json
import re

from playwright.sync_api import expect

from .pages import ask, wait_done

QUESTION = "Write a table of bridge designs and a python code example"
_RESUME = re.compile(r'42(\d*)\["resume",')


def lossy_context(browser, seq: int, every_time=False, spoil_token=False):
    """A browser context whose Socket.IO frames pass through a route that drops the
    chunk numbered ``seq`` (once, or every time), and records the page's resumes."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    record: dict[str, list] = {"dropped": [], "resumes": []}

    def route(ws):
        server = ws.connect_to_server()

        def from_server(message):
            if isinstance(message, str) and message.startswith('42["chunk"'):
                data = json.loads(message[2:])[1]
                if data["seq"] == seq and (every_time or not record["dropped"]):
                    record["dropped"].append(data["seq"])
                    return
            ws.send(message)

        def from_page(message):
            match = isinstance(message, str) and _RESUME.match(message)
            if match:
                head = "42" + match.group(1)
                event = json.loads(message[len(head) :])
                record["resumes"].append(event[1])
                if spoil_token:
                    event[1]["token"] = "spoiled"
                    message = head + json.dumps(event)
            server.send(message)

        server.on_message(from_server)
        ws.on_message(from_page)

    context.route_web_socket(re.compile(r".*/socket\.io/.*"), route)
    return context, record


def expect_lost_chunks(answer) -> None:
    """The answer ended in the error state: ``lost_chunks``, with a Retry button."""
    expect(answer).to_have_attribute("data-state", "error", timeout=30_000)
    expect(answer.get_by_test_id("error")).to_contain_text("lost_chunks")
    expect(answer.get_by_test_id("retry")).to_be_visible()


def test_page_fills_a_lost_chunk(browser, new_page):
    reference = ask(new_page("/"), QUESTION)
    context, record = lossy_context(browser, 10)
    try:
        answer = ask(new_page("/", context=context), QUESTION)
        wait_done(answer)
        wait_done(reference)
        assert record["dropped"] == [10]
        # Asked again from the last contiguous seq, on the same connection.
        assert [r["after"] for r in record["resumes"]] == [9]
        assert (
            answer.locator(".markdown").inner_text()
            == reference.locator(".markdown").inner_text()
        )
    finally:
        context.close()


def test_page_ends_with_lost_chunks_after_the_retries(browser, new_page):
    context, record = lossy_context(browser, 10, every_time=True)
    try:
        expect_lost_chunks(ask(new_page("/", context=context), QUESTION))
        assert [r["after"] for r in record["resumes"]] == [9, 9, 9]
    finally:
        context.close()


def test_page_shows_a_refused_resume_as_lost_chunks(browser, new_page):
    context, record = lossy_context(browser, 10, spoil_token=True)
    try:
        answer = ask(new_page("/", context=context), QUESTION)
        expect_lost_chunks(answer)
        expect(answer.get_by_test_id("error")).to_contain_text("resume_denied")
        assert len(record["resumes"]) == 1
    finally:
        context.close()
