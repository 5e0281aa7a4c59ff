"""/demo: several panes, each its own connection, streaming side by side."""

from playwright.sync_api import expect


def test_four_panes_stream_their_own_answers_in_isolation(new_page, artifacts):
    page = new_page("/demo")
    panes = page.get_by_test_id("pane")
    expect(panes).to_have_count(4)
    expect(page.locator(".pane-head .connection.connected")).to_have_count(4)

    page.get_by_test_id("send-all").click()

    expect(page.locator("[data-testid=pane][data-state=streaming]")).to_have_count(4)
    expect(page.locator("[data-testid=pane][data-state=done]")).to_have_count(
        4, timeout=30_000
    )
    texts = [panes.nth(i).get_by_test_id("pane-answer").inner_text() for i in range(4)]
    assert len(set(texts)) == 4
    assert all(texts)
    summary = page.get_by_test_id("isolation-summary")
    expect(summary).to_contain_text("isolated: true")
    sids = page.locator(".pane-head .sid").all_inner_texts()
    assert len(set(sids)) == 4, sids
    page.screenshot(path=artifacts / "demo.png", full_page=True)


def test_pane_count_changes_between_one_and_twelve(new_page):
    page = new_page("/demo")
    count = page.get_by_test_id("pane-count")

    count.fill("12")
    expect(page.get_by_test_id("pane")).to_have_count(12)
    count.fill("1")
    expect(page.get_by_test_id("pane")).to_have_count(1)
