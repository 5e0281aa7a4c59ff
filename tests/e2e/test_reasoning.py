"""Reasoning, highlighted code and rendered math on the chat page, in Chromium against
real servers: the demo reasoning model, and the relay in front of the test server."""

import base64
import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from app.providers.demo import compose, compose_reasoning
from tests.conftest import (
    upstream_reasoning,
    upstream_text,
)
from tests.openai_server import split_reply

from .pages import ask, wait_connected, wait_done

TRANSCRIPT = "chatstream.transcript.v1"
THINKING = re.compile(r"^Thinking… \d+ s$")
THOUGHT = re.compile(r"^Thought for \d+ s$")


def reply(markdown: str) -> str:
    """The test-server directive that makes the answer exactly ``markdown``."""
    return f"[[reply:{base64.b64encode(markdown.encode()).decode()}]]"


def stored_answers(page: Page) -> list[dict[str, Any]]:
    """The tab's answers as its sessionStorage holds them, once all are finished."""
    page.wait_for_function(
        "key => { const turns = JSON.parse(sessionStorage.getItem(key) ?? '[]')"
        ".filter(m => m.role === 'assistant');"
        " return turns.length > 0 && turns.every(m => m.status === 'done'); }",
        arg=TRANSCRIPT,
    )
    stored = page.evaluate("key => JSON.parse(sessionStorage.getItem(key))", TRANSCRIPT)
    return [m for m in stored if m["role"] == "assistant"]


def open_thinking(answer: Locator) -> Locator:
    """Click the closed reasoning block open; return its text."""
    thinking = answer.get_by_test_id("thinking")
    expect(thinking).to_have_attribute("data-open", "false")
    answer.get_by_test_id("thinking-toggle").click()
    expect(thinking).to_have_attribute("data-open", "true")
    expect(answer.get_by_test_id("thinking-toggle")).to_have_attribute(
        "aria-expanded", "true"
    )
    text = answer.get_by_test_id("thinking-text")
    expect(text).to_be_visible()
    return text


def test_thinking_block_streams_the_reasoning_then_closes_when_the_answer_starts(
    new_page, relay_url, artifacts
):
    prompt = "Think about the tides first [[reasoning:30]] [[tps:10]] [[tokens:20]]"
    reasoning = upstream_reasoning(prompt, 30)
    page = new_page(relay_url)
    answer = ask(page, prompt)
    thinking = answer.get_by_test_id("thinking")
    label = answer.get_by_test_id("thinking-label")
    text = answer.get_by_test_id("thinking-text")

    expect(thinking).to_have_attribute("data-state", "thinking")
    expect(thinking).to_have_attribute("data-open", "true")
    expect(label).to_have_text(THINKING)
    expect(text).to_have_text(re.compile(r"\S"))
    assert reasoning.startswith(text.inner_text())
    expect(answer.get_by_test_id("answer-text")).to_have_count(0)
    page.screenshot(path=artifacts / "reasoning-thinking.png")

    # The first answer text closes the block, while the answer still streams.
    expect(answer.get_by_test_id("answer-text")).to_be_visible()
    expect(thinking).to_have_attribute("data-open", "false")
    expect(text).to_be_hidden()
    wait_done(answer)
    expect(thinking).to_have_attribute("data-state", "done")
    expect(label).to_have_text(THOUGHT)
    assert answer.get_by_test_id("answer-text").inner_text() == upstream_text(
        prompt, 20
    )

    assert open_thinking(answer).inner_text() == reasoning
    page.screenshot(path=artifacts / "reasoning-opened.png")
    answer.get_by_test_id("thinking-toggle").click()
    expect(thinking).to_have_attribute("data-open", "false")
    expect(text).to_be_hidden()
    (stored,) = stored_answers(page)
    assert (stored["reasoning"], stored["content"]) == (
        reasoning,
        upstream_text(prompt, 20),
    )


def test_a_reload_keeps_the_reasoning_closed_above_its_answer(new_page, relay_url):
    prompt = "Reason about lighthouses [[reasoning:12]] [[tokens:8]]"
    page = new_page(relay_url)
    answer = ask(page, prompt)
    wait_done(answer)
    stored_answers(page)
    said = answer.get_by_test_id("thinking-label").inner_text()

    page.reload()

    wait_connected(page)
    answer = page.get_by_test_id("message-assistant")
    expect(answer).to_have_attribute("data-state", "done")
    thinking = answer.get_by_test_id("thinking")
    expect(thinking).to_have_attribute("data-state", "done")
    assert answer.get_by_test_id("thinking-label").inner_text() == said
    assert answer.get_by_test_id("answer-text").inner_text() == upstream_text(prompt, 8)
    assert open_thinking(answer).inner_text() == upstream_reasoning(prompt, 12)


@pytest.mark.parametrize("moment", ["reasoning", "answer"])
def test_a_reload_mid_stream_resumes_the_reasoning_and_the_answer(
    new_page, relay_url, upstream, moment
):
    marker = f"reload during the {moment}"
    prompt = f"Reason about harbors, {marker} [[reasoning:30]] [[tps:10]] [[tokens:20]]"
    page = new_page(relay_url)
    answer = ask(page, prompt)
    if moment == "reasoning":
        expect(answer.get_by_test_id("thinking")).to_have_attribute(
            "data-state", "thinking"
        )
        expect(answer.get_by_test_id("thinking-text")).to_have_text(re.compile(r"\S"))
    else:
        expect(answer.get_by_test_id("answer-text")).to_have_text(re.compile(r"\S"))
    assert answer.get_attribute("data-state") == "streaming"

    page.reload()

    answer = page.get_by_test_id("message-assistant")
    wait_done(answer)
    expect(answer).to_have_attribute("data-finish", "stop")
    expect(answer.get_by_test_id("thinking-label")).to_have_text(THOUGHT)
    # Nothing lost, nothing doubled, and the question was not asked again.
    assert answer.get_by_test_id("answer-text").inner_text() == upstream_text(
        prompt, 20
    )
    assert open_thinking(answer).inner_text() == upstream_reasoning(prompt, 30)
    (stored,) = stored_answers(page)
    assert (stored["reasoning"], stored["content"]) == (
        upstream_reasoning(prompt, 30),
        upstream_text(prompt, 20),
    )
    assert upstream.find(marker)["outcome"] == "completed"


def test_demo_reasoning_model_chosen_on_the_page_thinks_then_answers(new_page):
    question = "Explain how penguins keep warm"
    messages = [{"role": "user", "content": question}]
    # demo answers as demo-reasoning does after its reasoning: a reference tab.
    reference = ask(new_page("/"), question)
    page = new_page("/")
    wait_connected(page)
    chooser = page.get_by_test_id("model-chooser")
    expect(chooser).to_have_value("demo")

    chooser.select_option("demo-reasoning")
    answer = ask(page, question)

    thinking = answer.get_by_test_id("thinking")
    expect(thinking).to_have_attribute("data-state", "thinking")
    expect(thinking).to_have_attribute("data-open", "true")
    wait_done(answer)
    expect(thinking).to_have_attribute("data-open", "false")
    expect(answer.get_by_test_id("thinking-label")).to_have_text(THOUGHT)
    expect(answer.get_by_test_id("meta")).to_contain_text("demo-reasoning")
    assert open_thinking(answer).inner_text() == compose_reasoning(messages)
    wait_done(reference)
    assert reference.get_by_test_id("thinking").count() == 0
    expected = reference.get_by_test_id("answer-text").inner_text()
    assert answer.get_by_test_id("answer-text").inner_text() == expected
    (stored,) = stored_answers(page)
    assert stored["reasoning"] == compose_reasoning(messages)
    assert stored["content"] == compose(messages)

    page.reload()

    wait_connected(page)
    expect(page.get_by_test_id("model-chooser")).to_have_value("demo-reasoning")
    answer = page.get_by_test_id("message-assistant")
    assert open_thinking(answer).inner_text() == compose_reasoning(messages)


CODE = (
    "import math\n"
    "\n"
    "def area(radius: float) -> float:\n"
    '    """The area of a circle."""\n'
    "    return math.pi * radius**2\n"
)
FORMULAS = [
    "e^{i\\pi} + 1 = 0",
    "a^2 + b^2 = c^2",
    "\\int_0^1 x^2 \\, dx = \\frac{1}{3}",
    "\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}",
]
CODE_AND_MATH = (
    f"A function:\n\n```python\n{CODE}```\n\n"
    f"Inline, ${FORMULAS[0]}$ and \\({FORMULAS[1]}\\); displayed:\n\n"
    f"$$\n{FORMULAS[2]}\n$$\n\n"
    f"\\[\n{FORMULAS[3]}\n\\]\n"
)
# After each change to the answer: whether its code is highlighted, and how many
# formulas are rendered.
WATCH_RENDERING = """() => {
  window.renderings = [];
  new MutationObserver(() => {
    const answer = document.querySelector('[data-testid=answer-text]');
    if (!answer) return;
    window.renderings.push({
      plain: answer.querySelector('.code-block code:not(.hljs)') !== null,
      highlighted: answer.querySelector('.code-block code.hljs') !== null,
      formulas: answer.querySelectorAll('.katex').length,
    });
  }).observe(document.querySelector('main'), {
    subtree: true, childList: true, characterData: true,
  });
}"""


def test_code_is_highlighted_and_math_rendered_once_each_closes(
    new_page, relay_url, artifacts
):
    page = new_page(relay_url)
    wait_connected(page)
    page.evaluate(WATCH_RENDERING)

    answer = ask(page, f"Code and math, please [[tps:20]] {reply(CODE_AND_MATH)}")
    wait_done(answer)

    text = answer.get_by_test_id("answer-text")
    code = text.locator(".code-block code")
    expect(code).to_have_class("language-python hljs")
    assert code.text_content() == CODE
    expect(text.locator(".code-lang")).to_have_text("python")
    expect(code.locator(".hljs-keyword").first).to_have_text("import")
    assert "def" in code.locator(".hljs-keyword").all_text_contents()
    expect(code.locator(".hljs-string")).to_have_text('"""The area of a circle."""')
    expect(text.locator(".katex")).to_have_count(4)
    expect(text.locator(".katex-display")).to_have_count(2)
    expect(text.locator(".math-source")).to_have_count(0)
    sources = text.locator("annotation[encoding='application/x-tex']")
    assert [s.strip() for s in sources.all_text_contents()] == FORMULAS
    (stored,) = stored_answers(page)
    assert stored["content"] == CODE_AND_MATH
    # The answer alone: the question above it is a long base64 directive.
    answer.screenshot(path=artifacts / "chat-code-math.png")

    # While the fence was open the code showed plain; once highlighted, or a formula
    # rendered, it stayed so.
    renderings = page.evaluate("window.renderings")
    assert any(r["plain"] for r in renderings), renderings
    highlighted = [r["highlighted"] for r in renderings]
    assert highlighted[highlighted.index(True) :] == [True] * highlighted.count(True)
    formulas = [r["formulas"] for r in renderings]
    assert formulas == sorted(formulas) and formulas[-1] == 4


OPEN_FENCE = "Code first:\n\n```python\ndef add(a, b):\n    return a + b\n```\n"
OPEN_BLOCK = "Displayed:\n\n$$\nx^2 + 1 = 2\n$$\n"
OPEN_INLINE = "Inline $x^2 + y^2$ ends here."


@pytest.mark.parametrize(
    ("name", "markdown", "stop_before"),
    [
        ("fence", OPEN_FENCE, "\n```"),
        ("display-math", OPEN_BLOCK, "\n$$"),
        ("inline-math", OPEN_INLINE, " y^2$"),
    ],
    ids=["fence", "display-math", "inline-math"],
)
def test_an_unterminated_fence_or_formula_shows_as_plain_code_or_text(
    new_page, relay_url, artifacts, name, markdown, stop_before
):
    pieces = split_reply(markdown)
    # The test server holds the stream just before the closing delimiter.
    held = pieces.index(stop_before, 2)
    page = new_page(relay_url)
    answer = ask(page, f"Hold it open [[stall_after:{held}]] {reply(markdown)}")
    text = answer.get_by_test_id("answer-text")

    if markdown == OPEN_FENCE:
        code = text.locator(".code-block code")
        expect(code).to_have_text(re.compile("return a \\+ b$"))
        assert code.text_content() == "def add(a, b):\n    return a + b"
        expect(code).to_have_class("language-python")
        expect(code.locator("span")).to_have_count(0)
        expect(text.locator(".code-lang")).to_have_text("python")
    elif markdown == OPEN_BLOCK:
        source = text.locator(".math-source")
        expect(source).to_have_text(re.compile("= 2$"))
        assert source.text_content() == "$$\nx^2 + 1 = 2"
    else:
        expect(text).to_have_text("Inline $x^2 +")
        expect(text.locator(".math-source")).to_have_count(0)
    expect(text.locator(".katex")).to_have_count(0)
    expect(answer).to_have_attribute("data-state", "streaming")
    page.screenshot(path=artifacts / f"chat-open-{name}.png")

    page.get_by_test_id("stop").click()
    wait_done(answer)
    expect(answer).to_have_attribute("data-finish", "cancelled")
    (stored,) = stored_answers(page)
    assert stored["content"] == "".join(pieces[:held])
