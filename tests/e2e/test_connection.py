"""The page against a server that goes away and comes back."""

import sys

import pytest
from playwright.sync_api import expect

from tests.conftest import DEFAULT_ASYNC_MODE, ServerProcess, free_port

from .pages import ask, wait_connected, wait_done


class RestartableServer:
    """python wsgi.py on the demo model, on one port across restarts, in the default
    async mode."""

    def __init__(self, log_dir, web_dist):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.web_dist = web_dist
        self.process = None
        self.runs = 0
        self.kept = log_dir / f"restartable-{self.port}"

    def start(self) -> None:
        self.runs += 1
        self.process = ServerProcess(
            [sys.executable, "wsgi.py"],
            {
                "ASYNC_MODE": DEFAULT_ASYNC_MODE,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "LLM_PROVIDER": "demo",
                "DEMO_TTFT": "0.2",
                "DEMO_TOKENS_PER_SECOND": "20",
                "WEB_DIST_DIR": str(self.web_dist),
                # A restarted server keeps its conversations and its owner cookies.
                "DATABASE_URL": f"sqlite:///{self.kept}.db",
                "OWNER_SECRET_FILE": f"{self.kept}.secret",
            },
            self.log_dir / f"restartable-{self.port}-{self.runs}.log",
        )
        self.process.wait_http(self.url + "/healthz")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def crash(self) -> None:
        """Kill the server outright: no drain, connections simply drop."""
        self.process.proc.kill()
        self.process.proc.wait()
        self.stop()


@pytest.fixture
def restartable(tmp_session, web_dist):
    """A server of the test's own, which the test may stop and start again."""
    server = RestartableServer(tmp_session, web_dist)
    server.start()
    yield server
    server.stop()


def test_an_answer_lost_with_the_server_can_be_retried_after_reconnect(
    browser, restartable
):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(restartable.url)
        answer = ask(page, "Explain why lighthouses use Fresnel lenses")
        expect(answer).to_contain_text("lighthouses")

        restartable.crash()

        state = page.get_by_test_id("connection-state")
        expect(state).to_have_attribute("data-state", "reconnecting")
        expect(answer.locator(".resuming")).to_be_visible()

        restartable.start()

        wait_connected(page)
        # The new process never saw the request, so it cannot be resumed.
        expect(answer).to_have_attribute("data-state", "error")
        expect(answer.get_by_test_id("error")).to_contain_text("resume_denied")
        answer.get_by_test_id("retry").click()
        retried = page.get_by_test_id("message-assistant").last
        wait_done(retried)
        expect(retried).to_contain_text("Fresnel")
        expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    finally:
        context.close()
