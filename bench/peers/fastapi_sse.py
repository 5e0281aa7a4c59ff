"""Peer: FastAPI + Server-Sent Events, ``AsyncOpenAI`` and a ``StreamingResponse``.

POST /chat ``{message, max_tokens?}`` answers ``text/event-stream``: one
``data: {"delta": …}`` event per chunk, then ``data: [DONE]``. Run with
``uvicorn bench.peers.fastapi_sse:app``.
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI
from pydantic import BaseModel

MODEL = os.environ.get("LLM_MODEL", "test-model")
DEMO_TTFT = float(os.environ.get("DEMO_TTFT", "0.2"))
DEMO_TPS = float(os.environ.get("DEMO_TOKENS_PER_SECOND", "0"))

client = AsyncOpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL") or None,
    api_key=os.environ.get("OPENAI_API_KEY") or "unused",
    max_retries=0,
)
app = FastAPI()


class Chat(BaseModel):
    message: str
    max_tokens: int | None = None


async def demo_words(count: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    start = loop.time() + DEMO_TTFT
    for index in range(count):
        delay = start + index / DEMO_TPS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield f"w{index} "


async def upstream_words(chat: Chat) -> AsyncIterator[str]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": chat.message}],
        stream=True,
        max_tokens=chat.max_tokens,
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@app.post("/chat")
async def chat(body: Chat) -> StreamingResponse:
    words = demo_words(body.max_tokens or 100) if DEMO_TPS else upstream_words(body)

    async def events() -> AsyncIterator[str]:
        async for delta in words:
            yield f"data: {json.dumps({'delta': delta})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
