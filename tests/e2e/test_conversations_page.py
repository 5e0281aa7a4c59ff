"""Conversations kept by the server, on the chat page in Chromium, through the relay
in front of the test server: the sidebar (list, search, rename, delete), reopening
after a reload, an answer that streams on while another conversation is in view,
branches from regenerate and edit, and a second tab seeing a new conversation."""

import json
import re
import urllib.error
import urllib.request
from itertools import cycle
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.conftest import SYSTEM_PROMPT
from tests.openai_server import build_reply

from .pages import ask, wait_connected, wait_done


def reply(*turns: str, tokens: int, seed: int | None = None) -> str:
    """What the test server answers a conversation of ``turns`` (the user's, the
    assistant's, the user's, …) behind the relay's system prompt."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += [
        {"role": role, "content": text}
        for role, text in zip(cycle(["user", "assistant"]), turns, strict=False)
    ]
    return "".join(build_reply(messages, tokens, seed=seed))


def requests_with(upstream, marker: str) -> list[dict]:
    """The bodies of every upstream request whose last message holds ``marker``."""
    return [r["body"] for r in upstream.requests() if marker in (r["prompt"] or "")]


def sidebar_titles(page: Page) -> Locator:
    return page.get_by_test_id("conversation-title")


def item(page: Page, title: str) -> Locator:
    """The sidebar's entry for the conversation titled ``title``."""
    return page.get_by_test_id("conversation-item").filter(
        has=page.get_by_test_id("conversation-title").get_by_text(title, exact=True)
    )


def chats_sent(page: Page) -> list[dict]:
    """The payloads of the ``chat`` events ``page`` sends from now on (on the
    WebSockets it opens from now on)."""
    sent: list[dict] = []

    def on_frame(frame: str | bytes) -> None:
        match = isinstance(frame, str) and re.fullmatch(r"42\d*(\[.*\])", frame)
        if match and json.loads(match.group(1))[0] == "chat":
            sent.append(json.loads(match.group(1))[1])

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))
    return sent


def answer_text(answer: Locator) -> str:
    return answer.get_by_test_id("answer-text").inner_text()


def wait_text(answer: Locator, text: str) -> None:
    """The answer is done and shows exactly ``text``."""
    wait_done(answer)
    expect(answer.get_by_test_id("answer-text")).to_have_text(text)
    assert answer_text(answer) == text


def menu_action(page: Page, title: str, action: str) -> None:
    """Open the menu of the conversation ``title`` and choose ``action``."""
    entry = item(page, title)
    entry.get_by_test_id("conversation-menu-button").click()
    entry.get_by_test_id(action).click()


def test_a_new_chat_is_listed_by_its_title_and_reopens_after_a_reload(
    new_page, relay_url, artifacts
):
    prompt = "Tell me about tides [[tokens:6]]"
    page = new_page(relay_url)
    wait_connected(page)
    expect(page.get_by_test_id("conversations-empty")).to_be_visible()

    wait_text(ask(page, prompt), reply(prompt, tokens=6))

    # Titled by the first question, under Today, and the one in view.
    expect(sidebar_titles(page)).to_have_text([prompt])
    expect(page.get_by_test_id("conversation-group-label")).to_have_text(["Today"])
    expect(sidebar_titles(page)).to_have_attribute("aria-current", "page")
    page.screenshot(path=artifacts / "conversations-sidebar.png")

    page.reload()

    wait_connected(page)
    expect(sidebar_titles(page)).to_have_text([prompt])
    expect(page.get_by_test_id("message-user")).to_have_text([prompt])
    wait_text(page.get_by_test_id("message-assistant"), reply(prompt, tokens=6))
    expect(page.get_by_test_id("meta")).to_contain_text("test-model")

    # A new chat is empty, also after a reload; the conversation opens again from
    # the list, fetched from the server.
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    expect(sidebar_titles(page)).not_to_have_attribute("aria-current", "page")
    sent = chats_sent(page)
    page.reload()
    wait_connected(page)
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    sidebar_titles(page).click()
    expect(page.get_by_test_id("message-user")).to_have_text([prompt])
    wait_text(page.get_by_test_id("message-assistant"), reply(prompt, tokens=6))

    # Continuing it sends the new question alone, after the last message in view:
    # the server holds the rest.
    follow_up = "And the moon? [[tokens:5]]"
    wait_text(
        ask(page, follow_up),
        reply(prompt, reply(prompt, tokens=6), follow_up, tokens=5),
    )
    expect(sidebar_titles(page)).to_have_count(1)
    stored = page.evaluate(
        "async () => { const list = await (await fetch('/api/conversations')).json();"
        " return (await fetch('/api/conversations/' + list.data[0].id)).json(); }"
    )
    (chat,) = sent
    assert set(chat) == {"id", "conversation_id", "parent_id", "message", "model"}
    assert (chat["conversation_id"], chat["message"]) == (stored["id"], follow_up)
    assert chat["parent_id"] == stored["messages"][1]["id"]
    assert stored["messages"][1]["content"] == reply(prompt, tokens=6)


def test_an_answer_streams_on_while_another_conversation_is_in_view(
    new_page, relay_url
):
    page = new_page(relay_url)
    other = "Name three rivers [[tokens:4]]"
    wait_text(ask(page, other), reply(other, tokens=4))
    page.get_by_test_id("new-chat").click()
    slow = "Describe a long voyage [[tokens:60]] [[tps:15]]"
    answer = ask(page, slow)
    expect(answer.get_by_test_id("answer-text")).to_have_text(re.compile(r"\S"))
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(item(page, slow)).to_have_count(1)

    item(page, other).get_by_test_id("conversation-title").click()

    expect(page.get_by_test_id("message-user")).to_have_text([other])
    wait_text(page.get_by_test_id("message-assistant"), reply(other, tokens=4))
    # Back: the answer went on out of sight, to its end, none of it lost or doubled.
    item(page, slow).get_by_test_id("conversation-title").click()
    answer = page.get_by_test_id("message-assistant")
    wait_text(answer, reply(slow, tokens=60))
    expect(answer).to_have_attribute("data-finish", "stop")
    # What the store kept is what streamed, and it opens as such.
    page.get_by_test_id("new-chat").click()
    item(page, slow).get_by_test_id("conversation-title").click()
    wait_text(page.get_by_test_id("message-assistant"), reply(slow, tokens=60))


def test_a_reload_mid_stream_resumes_and_the_stored_answer_matches(
    new_page, relay_url, upstream
):
    prompt = "Recount a slow harvest [[tokens:50]] [[tps:20]]"
    page = new_page(relay_url)
    answer = ask(page, prompt)
    expect(answer.get_by_test_id("answer-text")).to_have_text(re.compile(r"\S"))

    page.reload()

    answer = page.get_by_test_id("message-assistant")
    wait_text(answer, reply(prompt, tokens=50))
    expect(answer).to_have_attribute("data-finish", "stop")
    # Asked once: the reload resumed the stream rather than asking again.
    assert len(requests_with(upstream, "slow harvest")) == 1
    page.reload()
    wait_text(page.get_by_test_id("message-assistant"), reply(prompt, tokens=50))
    expect(page.get_by_test_id("message-user")).to_have_count(1)


def test_regenerate_adds_an_answer_and_the_arrows_show_each_one(
    new_page, relay_url, upstream, artifacts
):
    prompt = "Suggest a name for a boat [[tokens:8]]"
    first, second = reply(prompt, tokens=8, seed=1), reply(prompt, tokens=8, seed=2)
    assert first != second
    # Each question from a tab goes with its ?options= seed: a reload with another
    # seed makes the regenerated answer differ from the first.
    page = new_page(f"{relay_url}/?options={quote(json.dumps({'seed': 1}))}")
    wait_text(ask(page, prompt), first)
    page.goto(f"{relay_url}/?options={quote(json.dumps({'seed': 2}))}")
    wait_connected(page)
    answer = page.get_by_test_id("message-assistant")
    wait_text(answer, first)

    page.get_by_test_id("regenerate").click()

    wait_text(answer, second)
    position = answer.get_by_test_id("branch-position")
    expect(position).to_have_text("2/2")
    expect(page.get_by_test_id("message-user")).to_have_text([prompt])
    # The second answer was asked for the same question, sent once.
    bodies = requests_with(upstream, "name for a boat")
    assert [body["messages"] for body in bodies] == [
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
    ] * 2
    assert [body.get("seed") for body in bodies] == [1, 2]
    page.screenshot(path=artifacts / "conversations-branches.png")

    answer.get_by_test_id("branch-previous").click()
    expect(position).to_have_text("1/2")
    wait_text(answer, first)
    answer.get_by_test_id("branch-next").click()
    expect(position).to_have_text("2/2")
    wait_text(answer, second)

    # The branch in view is kept over a reload.
    answer.get_by_test_id("branch-previous").click()
    expect(position).to_have_text("1/2")
    page.reload()
    answer = page.get_by_test_id("message-assistant")
    expect(answer.get_by_test_id("branch-position")).to_have_text("1/2")
    wait_text(answer, first)


def test_editing_a_question_branches_and_keeps_the_first_one(
    new_page, relay_url, upstream
):
    q1, q2 = "Pick a colour [[tokens:4]]", "Why that one? [[tokens:5]]"
    a1 = reply(q1, tokens=4)
    a2 = reply(q1, a1, q2, tokens=5)
    page = new_page(relay_url)
    wait_text(ask(page, q1), a1)
    wait_text(ask(page, q2), a2)

    question = page.get_by_test_id("user-turn").nth(1)
    question.get_by_test_id("edit").click()
    edited = "Why not blue instead? [[tokens:6]]"
    page.get_by_test_id("edit-input").fill(edited)
    page.get_by_test_id("edit-save").click()

    expect(page.get_by_test_id("message-user")).to_have_text([q1, edited])
    answers = page.get_by_test_id("message-assistant")
    wait_text(answers.nth(1), reply(q1, a1, edited, tokens=6))
    expect(question.get_by_test_id("branch-position")).to_have_text("2/2")
    (body,) = requests_with(upstream, "not blue instead")
    assert [m["content"] for m in body["messages"]] == [SYSTEM_PROMPT, q1, a1, edited]

    question.get_by_test_id("branch-previous").click()

    expect(page.get_by_test_id("message-user")).to_have_text([q1, q2])
    expect(question.get_by_test_id("branch-position")).to_have_text("1/2")
    wait_text(answers.nth(0), a1)
    wait_text(answers.nth(1), a2)


def test_a_second_tab_sees_conversations_appear_change_and_go(
    browser, new_page, relay_url
):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        page = new_page(relay_url, context=context)
        wait_connected(page)
        # Opened after the first: the same owner cookie.
        second = new_page(relay_url, context=context)
        wait_connected(second)
        expect(second.get_by_test_id("conversations-empty")).to_be_visible()

        prompt = "Plan a picnic [[tokens:3]]"
        wait_text(ask(page, prompt), reply(prompt, tokens=3))

        expect(sidebar_titles(second)).to_have_text([prompt])
        # The other tab's transcript is its own.
        expect(second.get_by_test_id("message-user")).to_have_count(0)

        menu_action(page, prompt, "rename")
        page.get_by_test_id("rename-input").fill("Picnic plans")
        page.get_by_test_id("rename-input").press("Enter")
        expect(sidebar_titles(page)).to_have_text(["Picnic plans"])
        expect(sidebar_titles(second)).to_have_text(["Picnic plans"])

        # Open in the second tab, deleted in the first: the second says so.
        sidebar_titles(second).click()
        expect(second.get_by_test_id("message-user")).to_have_text([prompt])
        menu_action(page, "Picnic plans", "delete")
        page.get_by_test_id("delete-confirm").click()

        expect(sidebar_titles(page)).to_have_count(0)
        expect(sidebar_titles(second)).to_have_count(0)
        expect(second.get_by_test_id("conversation-notice")).to_contain_text("deleted")
        expect(second.get_by_test_id("message-user")).to_have_count(0)
    finally:
        context.close()


def test_rename_search_and_delete(new_page, relay_url):
    page = new_page(relay_url)
    glaciers, volcanoes = (
        "Tell me about glaciers [[tokens:12]]",
        "Tell me about volcanoes [[tokens:12]]",
    )
    wait_text(ask(page, glaciers), reply(glaciers, tokens=12))
    page.get_by_test_id("new-chat").click()
    wait_text(ask(page, volcanoes), reply(volcanoes, tokens=12))
    # Newest first.
    expect(sidebar_titles(page)).to_have_text([volcanoes, glaciers])

    menu_action(page, glaciers, "rename")
    box = page.get_by_test_id("rename-input")
    expect(box).to_have_value(glaciers)
    box.fill("Ice, slowly")
    box.press("Enter")
    expect(sidebar_titles(page)).to_have_text([volcanoes, "Ice, slowly"])

    # A word of one answer alone: the search finds that conversation, by its answer.
    words = set(re.findall(r"[a-z]+", reply(glaciers, tokens=12)))
    words -= set(re.findall(r"[a-z]+", reply(volcanoes, tokens=12).lower()))
    words -= {
        "you",
        "said",
        "tell",
        "me",
        "about",
        "glaciers",
        "tokens",
        "ice",
        "slowly",
    }
    word = sorted(words)[0]
    search = page.get_by_test_id("conversation-search")
    search.fill(word)
    expect(sidebar_titles(page)).to_have_text(["Ice, slowly"])
    search.fill("zzzznothing")
    expect(page.get_by_test_id("conversations-empty")).to_have_text("No chat matches.")
    search.fill("")
    expect(sidebar_titles(page)).to_have_text([volcanoes, "Ice, slowly"])

    page.reload()
    expect(sidebar_titles(page)).to_have_text([volcanoes, "Ice, slowly"])

    menu_action(page, "Ice, slowly", "delete")
    page.get_by_test_id("delete-confirm").click()
    expect(sidebar_titles(page)).to_have_text([volcanoes])
    page.reload()
    expect(sidebar_titles(page)).to_have_text([volcanoes])


def test_export_links_download_the_conversation(new_page, relay_url):
    prompt = "Sum up the weather [[tokens:4]]"
    page = new_page(relay_url)
    wait_text(ask(page, prompt), reply(prompt, tokens=4))

    for action, check in (
        ("export-md", lambda text: prompt in text and reply(prompt, tokens=4) in text),
        (
            "export-json",
            lambda text: (
                [m["content"] for m in json.loads(text)["messages"]]
                == [prompt, reply(prompt, tokens=4)]
            ),
        ),
    ):
        with page.expect_download() as download:
            menu_action(page, prompt, action)
        path = download.value.path()
        assert check(path.read_text()), path.read_text()[:500]


def opening(page: Page, conversation_id: str) -> None:
    """Reload ``page`` as a tab that last showed ``conversation_id``: what its
    sessionStorage says after the page has saved its own on the way out."""
    page.add_init_script(
        script="sessionStorage.setItem('chatstream.view.v1', "
        + json.dumps(json.dumps({"id": conversation_id, "leafId": None}))
        + ")"
    )
    page.reload()


def test_a_conversation_that_is_gone_is_said_to_be(new_page, relay_url):
    page = new_page(relay_url)
    wait_connected(page)

    opening(page, "no-such-conversation")

    notice = page.get_by_test_id("conversation-notice")
    expect(notice).to_have_attribute("data-code", "not_found")
    expect(notice).to_contain_text("This chat does not exist")
    expect(page.get_by_role("heading", name="How can I help?")).to_have_count(0)
    # A new chat from there works as ever.
    notice.get_by_role("button", name="New chat").click()
    expect(notice).to_have_count(0)
    prompt = "Fresh start [[tokens:3]]"
    wait_text(ask(page, prompt), reply(prompt, tokens=3))


def test_on_a_phone_the_list_is_closed_until_asked_for(new_page, relay_url, artifacts):
    page = new_page(relay_url, viewport={"width": 375, "height": 740})
    prompt = "Phone question [[tokens:3]]"
    wait_text(ask(page, prompt), reply(prompt, tokens=3))
    sidebar = page.get_by_test_id("sidebar")
    toggle = page.get_by_test_id("sidebar-toggle")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    toggle.click()

    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    page.screenshot(path=artifacts / "conversations-phone.png")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    page.get_by_test_id("new-chat").click()
    expect(sidebar).to_be_hidden()
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    toggle.click()
    sidebar_titles(page).click()
    expect(sidebar).to_be_hidden()
    expect(page.get_by_test_id("message-user")).to_have_text([prompt])


def test_the_page_never_shows_another_owners_conversation(new_page, relay_url):
    prompt = "A private matter [[tokens:3]]"
    page = new_page(relay_url)
    wait_text(ask(page, prompt), reply(prompt, tokens=3))
    conversation_id = page.evaluate(
        "JSON.parse(sessionStorage.getItem('chatstream.view.v1')).id"
    )

    # Another browser (another cookie): not listed, not opened.
    stranger = new_page(relay_url)
    wait_connected(stranger)
    expect(stranger.get_by_test_id("conversations-empty")).to_be_visible()
    opening(stranger, conversation_id)
    expect(stranger.get_by_test_id("conversation-notice")).to_have_attribute(
        "data-code", "not_found"
    )
    expect(stranger.locator("main")).not_to_contain_text("private matter")
    # Nor without any cookie.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{relay_url}/api/conversations/{conversation_id}")
    assert refused.value.code == 404
