"""The chat page in a real browser against a real server on the demo model."""

from playwright.sync_api import expect

from .pages import ask, wait_connected, wait_done, watch_growth


def test_answer_streams_in_then_shows_its_figures(new_page, artifacts):
    page = new_page("/", permissions=["clipboard-read", "clipboard-write"])
    answer = ask(page, "Write a table of penguin species and a python code example")

    partials = watch_growth(answer)

    assert len(partials) >= 3, partials
    # Markdown may reshape text as it arrives (a table forms), so compare the ends.
    assert len(partials[0]) < len(partials[len(partials) // 2]) < len(partials[-1])
    expect(answer).to_contain_text("penguin")
    expect(answer.locator("table")).to_be_visible()
    copy = answer.locator(".code-block button[data-copy]")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert "def " in page.evaluate("navigator.clipboard.readText()")
    meta = answer.get_by_test_id("meta")
    expect(meta).to_contain_text("TTFT")
    expect(meta).to_contain_text("tok/s")
    expect(meta).to_contain_text("demo")
    expect(page.get_by_test_id("regenerate")).to_be_visible()
    page.screenshot(path=artifacts / "chat.png")


def test_stop_ends_the_answer_and_marks_it_stopped(new_page):
    page = new_page("/")
    answer = ask(page, "Explain how glaciers carve valleys over many centuries")
    expect(answer).to_contain_text("glaciers")

    page.get_by_test_id("stop").click()

    wait_done(answer)
    expect(answer).to_have_attribute("data-finish", "cancelled")
    expect(answer.get_by_test_id("meta")).to_contain_text("stopped")
    stopped_at = answer.locator(".markdown").inner_text()
    expect(page.get_by_test_id("send")).to_be_visible()
    # Nothing more arrives: the next answer streams in whole on the same connection,
    # after anything the stopped one could still have sent.
    wait_done(ask(page, "And how do fjords form?"))
    assert answer.locator(".markdown").inner_text() == stopped_at
    expect(answer).to_have_attribute("data-finish", "cancelled")


def test_three_tabs_each_show_only_their_own_answer(browser, new_page):
    context = browser.new_context()
    topics = ["giraffe", "obsidian", "saxophone"]
    pages = [new_page("/", context=context) for _ in topics]
    try:
        for page, topic in zip(pages, topics, strict=True):
            wait_connected(page)
            page.get_by_test_id("composer").fill(f"Explain the {topic} briefly")
        for page in pages:
            page.get_by_test_id("composer").press("Enter")
        for page in pages:
            wait_done(page.get_by_test_id("message-assistant").last)

        for page, topic in zip(pages, topics, strict=True):
            transcript = page.locator("main").inner_text().lower()
            assert topic in transcript
            for other in topics:
                if other != topic:
                    assert other not in transcript, f"{topic} tab shows {other}"
            assert page.get_by_test_id("message-assistant").count() == 1
    finally:
        context.close()


def test_markup_in_an_answer_is_shown_as_text(new_page):
    page = new_page("/")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    payload = "<img src=x onerror=alert(1)> and [click](javascript:alert(1))"

    answer = ask(page, f"Quote this back: {payload}")
    wait_done(answer)

    expect(answer).to_contain_text("<img src=x onerror=alert(1)>")
    expect(answer).to_contain_text("[click](javascript:alert(1))")
    # No element that could run the payload exists: no image (whose onerror would
    # fire), no script, no handler attribute, no javascript: link.
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    assert page.locator('a[href^="javascript:"]').count() == 0
    handlers = page.evaluate(
        "() => [...document.querySelectorAll('main *')].flatMap(el =>"
        " [...el.attributes].map(a => a.name).filter(n => n.startsWith('on')))"
    )
    assert handlers == []
    assert dialogs == []


def test_reload_keeps_the_tab_transcript_and_other_tabs_never_see_it(browser, new_page):
    page = new_page("/")
    answer = ask(page, "Tell me about quokka habitats")
    wait_done(answer)
    said = answer.inner_text()

    page.reload()

    wait_connected(page)
    expect(page.get_by_test_id("message-user")).to_have_text(
        "Tell me about quokka habitats"
    )
    assert page.get_by_test_id("message-assistant").inner_text() == said
    expect(page.get_by_test_id("meta")).to_contain_text("demo")

    for other in (new_page("/", context=page.context), new_page("/")):
        wait_connected(other)
        expect(other.get_by_test_id("message-user")).to_have_count(0)
        expect(other.locator("main")).not_to_contain_text("quokka")

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    page.reload()
    wait_connected(page)
    expect(page.locator("main")).not_to_contain_text("quokka")


def test_reload_mid_stream_picks_the_answer_up_where_it_stopped(new_page):
    question = "Write a table of bridge designs and a python code example"
    # The demo model always answers a question alike: a second tab gives the reference.
    reference = ask(new_page("/"), question)
    page = new_page("/")
    answer = ask(page, question)
    expect(answer.locator("li").first).to_be_visible()

    page.reload()

    answer = page.get_by_test_id("message-assistant")
    wait_done(answer)
    wait_done(reference)
    # Nothing lost, nothing doubled.
    expected = reference.locator(".markdown").inner_text()
    assert answer.locator(".markdown").inner_text() == expected


def test_shift_enter_adds_a_line_and_regenerate_replaces_the_answer(new_page):
    page = new_page("/")
    wait_connected(page)
    composer = page.get_by_test_id("composer")
    composer.press_sequentially("Describe the tides")
    composer.press("Shift+Enter")
    composer.press_sequentially("at the Bay of Fundy")
    assert composer.input_value() == "Describe the tides\nat the Bay of Fundy"
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    composer.press("Enter")
    expect(page.get_by_test_id("message-user")).to_have_text(
        "Describe the tides\nat the Bay of Fundy"
    )
    wait_done(page.get_by_test_id("message-assistant"))

    page.get_by_test_id("regenerate").click()

    answers = page.get_by_test_id("message-assistant")
    expect(answers).to_have_count(1)
    wait_done(answers.first)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(answers.first).to_contain_text("tides")


def test_narrow_dark_page_fits_a_phone(new_page, artifacts):
    page = new_page("/", viewport={"width": 375, "height": 740}, color_scheme="dark")
    wait_done(ask(page, "Show a python code example that parses dates"))

    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(255, 255, 255)"
    page.screenshot(path=artifacts / "chat-mobile-dark.png")


def test_a_rejected_request_shows_its_error_and_a_retry(new_page, artifacts):
    page = new_page("/")
    answer = ask(page, "too long " * 4000)  # 36,000 characters; the limit is 32,000

    expect(answer).to_have_attribute("data-state", "error")
    error = answer.get_by_test_id("error")
    expect(error).to_contain_text("invalid_request")
    expect(error).to_contain_text("limit")
    page.screenshot(path=artifacts / "chat-error.png")

    answer.get_by_test_id("retry").click()

    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(page.get_by_test_id("message-assistant")).to_have_attribute(
        "data-state", "error"
    )


def test_scrolling_up_stops_following_the_stream(new_page, artifacts):
    page = new_page("/", viewport={"width": 800, "height": 420})
    answer = ask(page, "Write a table of otter facts and a python code example")
    transcript = page.locator("main")
    gap_js = "el => el.scrollHeight - el.scrollTop - el.clientHeight"
    page.wait_for_function(
        "() => { const el = document.querySelector('main');"
        " return el.scrollHeight - el.clientHeight > 120; }"
    )
    assert transcript.evaluate(gap_js) < 50  # following the stream

    transcript.hover()
    transcript.evaluate(
        "el => { const ends = (window.scrollEnds = []);"
        " el.addEventListener('scrollend', () => ends.push(el.scrollTop)); }"
    )
    page.mouse.wheel(0, -300)
    # The reader's scroll has come to rest away from the bottom: the last scrollend
    # was there, and the view has not moved since.
    page.wait_for_function(
        "() => { const el = document.querySelector('main'), ends = window.scrollEnds;"
        " return ends.length > 0 && ends[ends.length - 1] === el.scrollTop"
        " && el.scrollHeight - el.scrollTop - el.clientHeight > 50; }"
    )
    held, height = transcript.evaluate("el => [el.scrollTop, el.scrollHeight]")
    page.wait_for_function(
        "h => document.querySelector('main').scrollHeight > h", arg=height
    )

    # The answer grew below while the view stayed where the reader put it.
    assert transcript.evaluate("el => el.scrollTop") == held
    assert transcript.evaluate(gap_js) > 50
    jump = page.get_by_role("button", name="Jump to the latest message")
    expect(jump).to_be_visible()
    page.screenshot(path=artifacts / "chat-scrolled-up.png")

    jump.click()
    wait_done(answer)
    assert transcript.evaluate(gap_js) < 50
