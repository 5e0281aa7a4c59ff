"""Peer: the naive Flask-SocketIO relay, as tutorials write it.

The ``chat`` handler calls the sync openai client itself and ``emit()``s every chunk
as its own event, then ``done``; no stop, no limits, no care for concurrency. Same
events as the relay (``chat`` → ``chunk {id, seq, delta}`` … ``done {id}``). Run
with ``gunicorn -k eventlet -w 1 bench.peers.naive_socketio:app``.
"""

import eventlet

eventlet.monkey_patch()

import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, emit  # noqa: E402
from openai import OpenAI  # noqa: E402

MODEL = os.environ.get("LLM_MODEL", "test-model")
DEMO_TTFT = float(os.environ.get("DEMO_TTFT", "0.2"))
DEMO_TPS = float(os.environ.get("DEMO_TOKENS_PER_SECOND", "0"))

client = OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL") or None,
    api_key=os.environ.get("OPENAI_API_KEY") or "unused",
    max_retries=0,
)
app = Flask(__name__)
socketio = SocketIO(app, async_mode="eventlet")


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
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


@socketio.on("chat")
def chat(data):
    max_tokens = (data.get("options") or {}).get("max_tokens")
    if DEMO_TPS:
        words = demo_words(max_tokens or 100)
    else:
        words = upstream_words(data["message"], max_tokens)
    for seq, delta in enumerate(words):
        emit("chunk", {"id": data["id"], "seq": seq, "delta": delta})
    emit("done", {"id": data["id"], "finish_reason": "stop"})


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
