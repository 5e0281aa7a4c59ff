"""Images and tool calls on the chat page, in Chromium, through the relay in front of
the test server: what the upstream receives, and what the page shows."""

import base64
import json
import re
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.sync_api import Page, expect

from tests.conftest import (
    SYSTEM_PROMPT,
    Upstream,
    wait_until,
)
from tests.openai_server.tools import build_tool_calls

from .pages import ask, wait_connected, wait_done

TRANSCRIPT = "chatstream.transcript.v1"
# What the page answers for each tool call (streamState.js: TOOL_NOT_RUN).
TOOL_NOT_RUN = "Not run: this chat page does not run tools."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]

# A DataTransfer holding the file whose data URL and name are given.
_FILES = """const [url, name] = file;
  const bytes = Uint8Array.from(atob(url.split(',')[1]), (c) => c.charCodeAt(0));
  const files = new DataTransfer();
  files.items.add(new File([bytes], name, { type: 'image/png' }));"""
PASTE = f"""(box, file) => {{ {_FILES}
  box.dispatchEvent(
    new ClipboardEvent('paste', {{ clipboardData: files, bubbles: true }}),
  );
}}"""
DROP = f"""(form, file) => {{ {_FILES}
  for (const type of ['dragenter', 'dragover', 'drop']) {{
    form.dispatchEvent(
      new DragEvent(type, {{ dataTransfer: files, bubbles: true, cancelable: true }}),
    );
  }}
}}"""


def gradient(fraction: float) -> tuple[int, int, int]:
    """The colour of ``png``'s pixels at ``fraction`` of the width: red rises, green
    falls, blue stays."""
    red = round(255 * fraction)
    return red, 255 - red, 128


def png(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` × ``height`` pixels, a smooth gradient left to right."""
    row = b"".join(bytes(gradient(x / max(width - 1, 1))) for x in range(width))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + row) * height)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def png_size(data_url: str) -> tuple[int, int]:
    """The width and height a PNG data URL's header gives."""
    head, _, data = data_url.partition(",")
    assert head == "data:image/png;base64", head
    return struct.unpack(">II", base64.b64decode(data)[16:24])


# The colours at a few fractions of the width, halfway down an image (a data URL),
# as the browser decodes it.
SAMPLE_PIXELS = """async ([url, fractions]) => {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const y = Math.floor(canvas.height / 2);
  return fractions.map((f) => {
    const x = Math.round(f * (canvas.width - 1));
    return Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3));
  });
}"""


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def last_text(body: Any) -> str:
    """The text of a request body's last message: its content string, or its text
    parts ("" for a body of another shape: the server records bad ones too)."""
    try:
        content = body["messages"][-1]["content"]
    except (TypeError, KeyError, IndexError):
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        part.get("text", "")
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


def upstream_body(upstream: Upstream, marker: str) -> dict[str, Any]:
    """The body of the one request the upstream got whose last message holds
    ``marker`` in its text."""
    found = [
        record["body"]
        for record in upstream.requests()
        if marker in last_text(record.get("body"))
    ]
    assert len(found) == 1, f"{len(found)} upstream requests contain {marker!r}"
    return found[0]


def attach(page: Page, *paths: Path) -> None:
    """Choose ``paths`` with the composer's attach button, as a person would."""
    with page.expect_file_chooser() as chooser:
        page.get_by_test_id("attach").click()
    chooser.value.set_files([str(path) for path in paths])


def stored_transcript(page: Page) -> str:
    return page.evaluate("key => sessionStorage.getItem(key) ?? ''", TRANSCRIPT)


def answer_text(page: Page, index: int) -> str:
    """The text of the page's ``index``-th answer, as the tab stored it."""
    stored = json.loads(stored_transcript(page))
    return [m for m in stored if m["role"] == "assistant"][index]["content"]


def test_an_attached_image_reaches_the_upstream_as_the_same_data_url(
    new_page, relay_url, upstream, tmp_path, artifacts
):
    path = tmp_path / "gradient.png"
    path.write_bytes(png(48, 32))
    sent = data_url(path)
    marker = f"image {uuid.uuid4().hex[:8]}"
    prompt = f"What is in this picture? {marker} [[tokens:6]]"
    page = new_page(relay_url)
    wait_connected(page)

    attach(page, path)

    # Small enough to go as it is: the composer shows the file's own bytes.
    thumbnail = page.get_by_test_id("attachment-image")
    expect(thumbnail).to_have_attribute("src", sent)
    answer = ask(page, prompt)
    wait_done(answer)
    expect(page.get_by_test_id("attachments")).to_have_count(0)
    user = page.get_by_test_id("message-user")
    expect(user.get_by_test_id("user-image")).to_have_attribute("src", sent)
    expect(user).to_contain_text("What is in this picture?")
    page.screenshot(path=artifacts / "image-sent.png")

    body = upstream_body(upstream, marker)
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": sent}},
            ],
        },
    ]

    # The tab's storage keeps no image data; the server keeps the conversation: a
    # reload shows the image from there, and the next question sends only itself,
    # the server putting the same image back in the history.
    wait_until(lambda: '"status":"done"' in stored_transcript(page))
    assert "data:image" not in stored_transcript(page)
    page.reload()
    wait_connected(page)
    shown = page.get_by_test_id("user-image")
    expect(shown).to_have_attribute("src", re.compile(r"^/api/blobs/[0-9a-f]{64}$"))
    assert shown.evaluate("img => img.decode().then(() => img.naturalWidth)") == 48
    follow_up = f"And now? {marker}-again [[tokens:4]]"
    wait_done(ask(page, follow_up))
    body = upstream_body(upstream, f"{marker}-again")
    assert [m["content"] for m in body["messages"][1:]] == [
        [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": sent}},
        ],
        answer_text(page, 0),
        follow_up,
    ]


def test_a_large_image_is_sent_downscaled_to_1568_px_on_its_long_side(
    new_page, relay_url, upstream, tmp_path
):
    path = tmp_path / "wide.png"
    path.write_bytes(png(3000, 1200))
    marker = f"wide {uuid.uuid4().hex[:8]}"
    page = new_page(relay_url)
    wait_connected(page)

    attach(page, path)
    expect(page.get_by_test_id("attachment-image")).to_have_attribute(
        "src", re.compile("^data:image/png;base64,")
    )
    wait_done(ask(page, f"Describe it {marker} [[tokens:3]]"))

    (part,) = [
        p
        for p in upstream_body(upstream, marker)["messages"][-1]["content"]
        if p["type"] == "image_url"
    ]
    sent = part["image_url"]["url"]
    assert png_size(sent) == (1568, 627)
    # The same picture, smaller: the gradient where it was.
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    seen = page.evaluate(SAMPLE_PIXELS, [sent, fractions])
    for fraction, colour in zip(fractions, seen, strict=True):
        expected = gradient(fraction)
        assert all(abs(a - b) <= 4 for a, b in zip(colour, expected, strict=True)), (
            fraction,
            colour,
            expected,
        )
    src = page.get_by_test_id("user-image").get_attribute("src")
    assert src == sent


def test_images_come_by_paste_and_drop_too_at_most_four(new_page, relay_url, tmp_path):
    page = new_page(relay_url)
    wait_connected(page)
    paths = []
    for n in range(5):
        path = tmp_path / f"p{n}.png"
        path.write_bytes(png(8 + n, 8))
        paths.append(path)
    urls = [data_url(path) for path in paths]
    thumbnails = page.get_by_test_id("attachment-image")

    # A paste into the message box, then a drop on the composer, as the browser
    # makes them: a DataTransfer holding a File.
    page.get_by_test_id("composer").evaluate(PASTE, [urls[0], "p0.png"])
    expect(thumbnails).to_have_count(1)
    page.get_by_test_id("composer-form").evaluate(DROP, [urls[1], "p1.png"])
    expect(thumbnails).to_have_count(2)

    # Three more chosen: one too many.
    attach(page, *paths[2:])
    expect(thumbnails).to_have_count(4)
    expect(page.get_by_test_id("attach-problem")).to_have_text(
        "A message takes at most 4 images: 1 left out."
    )
    expect(page.get_by_test_id("attach")).to_be_disabled()
    assert [thumbnails.nth(i).get_attribute("src") for i in range(4)] == urls[:4]

    page.get_by_role("button", name="Remove p1.png").click()
    expect(thumbnails).to_have_count(3)
    assert [thumbnails.nth(i).get_attribute("src") for i in range(3)] == [
        urls[0],
        urls[2],
        urls[3],
    ]
    expect(page.get_by_test_id("attach")).to_be_enabled()


def test_tool_calls_render_as_cards_and_the_next_question_says_they_were_not_run(
    new_page, relay_url, upstream, artifacts
):
    marker = f"tools {uuid.uuid4().hex[:8]}"
    # No answer text ([[tokens:0]]): the calls alone, paced to be seen streaming.
    prompt = f"Weather and time? {marker} [[tokens:0]] [[tool_calls:2]] [[tps:20]]"
    options = quote(json.dumps({"tools": TOOLS}))
    page = new_page(f"{relay_url}/?options={options}")
    expect(page.get_by_test_id("request-options")).to_have_text("options: tools")

    answer = ask(page, prompt)

    cards = answer.get_by_test_id("tool-call")
    expect(cards.first).to_have_attribute("data-state", "streaming")
    wait_done(answer)
    expect(answer).to_have_attribute("data-finish", "tool_calls")
    body = upstream_body(upstream, marker)
    assert body["tools"] == TOOLS
    calls = build_tool_calls(body["messages"], body["tools"], 2)
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    expect(cards).to_have_count(2)
    for card, call in zip(cards.all(), calls, strict=True):
        expect(card).to_have_attribute("data-state", "called")
        expect(card.get_by_test_id("tool-call-name")).to_have_text(call["name"])
        pretty = json.dumps(json.loads(call["arguments"]), indent=2, ensure_ascii=False)
        assert card.get_by_test_id("tool-call-arguments").inner_text() == pretty
    expect(answer.get_by_test_id("tool-note")).to_be_visible()
    page.screenshot(path=artifacts / "tool-calls.png")

    # The cards survive a reload; the next question carries the calls and a tool
    # message for each, so an OpenAI-compatible server takes it.
    page.reload()
    answer = page.get_by_test_id("message-assistant")
    expect(answer.get_by_test_id("tool-call")).to_have_count(2)
    expect(answer.get_by_test_id("tool-call").nth(1)).to_have_attribute(
        "data-state", "called"
    )
    wait_done(ask(page, f"Thanks. {marker}-next [[tokens:4]]"))
    body = upstream_body(upstream, f"{marker}-next")
    assert body["tools"] == TOOLS
    system, question, asked, *answered, thanks = body["messages"]
    assert (system["role"], question["content"]) == ("system", prompt)
    assert asked["role"] == "assistant"
    assert asked["content"] is None
    assert asked["tool_calls"] == [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]
    assert answered == [
        {"role": "tool", "tool_call_id": call["id"], "content": TOOL_NOT_RUN}
        for call in calls
    ]
    assert thanks == {"role": "user", "content": f"Thanks. {marker}-next [[tokens:4]]"}
