"""Peer: python-socketio's ASGI server under uvicorn, with ``AsyncOpenAI``: the Python
reference, as its documentation leads a user to write a Socket.IO relay.

``socketio.AsyncServer(async_mode="asgi")``; the ``chat`` handler reads the typed
stream (``chat.completions.create(stream=True)``) and emits every chunk as its own
event to the requesting connection only (``to=sid``), then ``done``; no stop, no
limits. Same events as the relay (``chat`` → ``chunk {id, seq, delta}`` …
``done {id}``). Run with ``uvicorn bench.peers.python_socketio_asgi:app``.
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator

import socketio
from openai import AsyncOpenAI

MODEL = os.environ.get("LLM_MODEL", "test-model")
DEMO_TTFT = float(os.environ.get("DEMO_TTFT", "0.2"))
DEMO_TPS = float(os.environ.get("DEMO_TOKENS_PER_SECOND", "0"))

client = AsyncOpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL") or None,
    api_key=os.environ.get("OPENAI_API_KEY") or "unused",
    max_retries=0,
)
sio = socketio.AsyncServer(async_mode="asgi")


async def demo_words(count: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    start = loop.time() + DEMO_TTFT
    for index in range(count):
        delay = start + index / DEMO_TPS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield f"w{index} "


async def upstream_words(message: str, max_tokens: int | None) -> AsyncIterator[str]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        stream=True,
        max_tokens=max_tokens,
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@sio.on("chat")
async def chat(sid: str, data: dict) -> None:
    """Sent by a client to start an answer; the chunks and done go to it alone."""
    max_tokens = (data.get("options") or {}).get("max_tokens")
    if DEMO_TPS:
        words = demo_words(max_tokens or 100)
    else:
        words = upstream_words(data["message"], max_tokens)
    seq = 0
    async for delta in words:
        await sio.emit("chunk", {"id": data["id"], "seq": seq, "delta": delta}, to=sid)
        seq += 1
    await sio.emit("done", {"id": data["id"], "finish_reason": "stop"}, to=sid)


async def healthz(scope: dict, receive, send) -> None:
    """GET /healthz (anything but Socket.IO's path): the benchmark's start check."""
    found = scope["type"] == "http" and scope["path"] == "/healthz"
    await send(
        {
            "type": "http.response.start",
            "status": 200 if found else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    body = json.dumps({"status": "ok"} if found else {"error": "not found"})
    await send({"type": "http.response.body", "body": body.encode()})


app = socketio.ASGIApp(sio, other_asgi_app=healthz)
