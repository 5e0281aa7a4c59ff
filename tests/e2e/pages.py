"""What a person does on the chat page, for the browser tests."""

import time

from playwright.sync_api import Locator, Page, expect


def wait_connected(page: Page) -> None:
    expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )


def ask(page: Page, text: str) -> Locator:
    """Type a question, press Enter, and return the answer that it starts."""
    wait_connected(page)
    before = page.get_by_test_id("message-assistant").count()
    page.get_by_test_id("composer").fill(text)
    page.get_by_test_id("composer").press("Enter")
    answer = page.get_by_test_id("message-assistant").nth(before)
    expect(answer).to_be_attached()
    return answer


def wait_done(answer: Locator, timeout: float = 30_000) -> None:
    expect(answer).to_have_attribute("data-state", "done", timeout=timeout)


def watch_growth(answer: Locator, timeout: float = 30) -> list[str]:
    """The distinct texts the answer shows while it streams, until it is done."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = answer.get_attribute("data-state")
        text = answer.inner_text()
        if state == "done":
            return seen
        if text.strip() and (not seen or seen[-1] != text):
            seen.append(text)
        time.sleep(0.03)
    raise AssertionError(f"the answer did not finish in {timeout} s: {seen[-1:]}")
