"""Peer: Flask streamed response (``Response(generator)``) under gunicorn gthread.

POST /chat ``{message, max_tokens?}`` answers ``text/event-stream``: one
``data: {"delta": …}`` event per chunk, then ``data: [DONE]``. One thread per
stream: run with ``gunicorn -k gthread --threads N bench.peers.flask_stream:app``.
"""

import json
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, request
from openai import OpenAI

MODEL = os.environ.get("LLM_MODEL", "test-model")
DEMO_TTFT = float(os.environ.get("DEMO_TTFT", "0.2"))
DEMO_TPS = float(os.environ.get("DEMO_TOKENS_PER_SECOND", "0"))

client = OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL") or None,
    api_key=os.environ.get("OPENAI_API_KEY") or "unused",
    max_retries=0,
)
app = Flask(__name__)


def demo_words(count: int) -> Iterator[str]:
    start = time.monotonic() + DEMO_TTFT
    for index in range(count):
        delay = start + index / DEMO_TPS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield f"w{index} "


def upstream_words(message: str, max_tokens: int | None) -> Iterator[str]:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        stream=True,
        max_tokens=max_tokens,
    )
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@app.post("/chat")
def chat() -> Response:
    body = request.get_json()
    max_tokens = body.get("max_tokens")
    if DEMO_TPS:
        words = demo_words(max_tokens or 100)
    else:
        words = upstream_words(body["message"], max_tokens)

    def events() -> Iterator[str]:
        for delta in words:
            yield f"data: {json.dumps({'delta': delta})}\n\n"
        yield "data: [DONE]\n\n"

    return Response(events(), mimetype="text/event-stream")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
