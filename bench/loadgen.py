"""The load generator: lean asyncio clients in their own processes.

Five kinds of client, one stream at a time each:

- ``sio``: Socket.IO v5 over Engine.IO v4 on a raw WebSocket (the relay and the
  Socket.IO peers), offering permessage-deflate as browsers do. A python-socketio
  client costs far more CPU per event.
- ``sse``: an HTTP/1.1 POST whose response is a text/event-stream (the SSE peers).
- ``openai``: the official ``openai`` package's ``AsyncOpenAI`` straight at the
  upstream: the baseline the relay's added latency is measured against.
- ``openai-http``: the same request and stream read with raw HTTP/1.1, every event
  that one socket read brought parsed at once: the no-relay baseline at stream
  counts where ``AsyncOpenAI`` (~100 µs per chunk) would saturate the generators,
  and the client of the relay's own OpenAI-compatible transport (``*-sse`` relay
  targets), whose stream is the same work to read.
- ``responses-http``: that reader for the relay's Responses API (``POST
  /v1/responses``, the ``*-responses`` relay targets): each
  ``response.output_text.delta`` event's text, to ``response.completed``.

Each process (``Generator``) runs its share of the clients and reports, for the
streams started inside the measurement window, per-token arrival times turned into
TTFT, inter-chunk gaps, lateness and completeness, plus its own CPU use and event-loop
lag over that window, so a saturated generator shows up as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .procstat import cpu_seconds, percentile

# How often the lag probe wakes; its oversleep is the event-loop lag.
LAG_TICK = 0.01
# Connections not open by then count as failures: a server that cannot accept its
# clients in this time has failed the level.
CONNECT_DEADLINE = 90.0


@dataclass
class Job:
    """What one generator process does in one phase."""

    kind: str  # "sio", "sse", "openai", "openai-http" or "responses-http"
    url: str  # the target's base URL (for "openai*", the /v1 base URL)
    slots: int  # concurrent client slots in this process
    mode: str  # "sustained", "burst" or "idle"
    prompt: str
    max_tokens: int
    expected_text: str
    rate: float  # nominal tokens/s of the source, for lateness
    duration: float = 0.0  # sustained: start no stream after this (from go)
    warmup: float = 0.0  # streams started earlier than this are not measured
    stagger: float = 0.0  # spread the first starts over this many seconds
    stream_timeout: float = 30.0  # a stream still open after this is cut off
    # The model an OpenAI-API request names; none ("") asks for the server's
    # default, as the Socket.IO client does of the relay.
    model: str = ""
    api_key: str = "unused"
    seed: int = 0
    first_slot: int = 0  # this process's first slot number, machine-wide
    parts: int = 1  # sustained: summarise this many consecutive sub-windows apart


@dataclass
class StreamRecord:
    start: float
    first: float | None = None
    end: float | None = None
    arrivals: list[float] = field(default_factory=list)  # one per token of text
    chunk_times: list[float] = field(default_factory=list)  # one per text event
    parts: list[str] = field(default_factory=list)
    words: int = 0
    ended_in_space: bool = True
    finish: str | None = None  # "done", an error code, "timeout" or "closed"

    def text_event(self, now: float, delta: str) -> None:
        if self.first is None:
            self.first = now
        self.chunk_times.append(now)
        self.parts.append(delta)
        # A token is whitespace-led text; a delta that continues a word (no
        # space on either side of the join) adds no new token.
        count = len(delta.split())
        if count and not self.ended_in_space and not delta[0].isspace():
            count -= 1
        self.ended_in_space = delta[-1].isspace()
        if count:
            self.arrivals.extend([now] * count)


# -- the three clients ---------------------------------------------------------------


def source_address(slot: int) -> str:
    """A loopback address of its own for each client slot: 127.0.1.1, 127.0.1.2, …

    The whole of 127.0.0.0/8 reaches this machine's loopback, so every client has
    its own address, as real users would; per-address limits then apply per user.
    """
    return f"127.0.{1 + slot // 250}.{1 + slot % 250}"


def owner_cookie(owner_id: str) -> str:
    """The owner cookie of an anonymous browser named ``owner_id``, signed as the
    relay under test signs it (bench/servers.py)."""
    from itsdangerous import URLSafeSerializer

    from .servers import OWNER_SECRET

    value = URLSafeSerializer(OWNER_SECRET, salt="chatstream.owner").dumps(owner_id)
    return f"chatstream_owner={value}"


class SioClient:
    """One Socket.IO connection to the default namespace, raw Engine.IO v4 frames.

    A reader task runs for the connection's life: it answers the server's pings
    (``2`` → ``3``) and hands ``chunk``/``done``/``error`` events of the current
    request to its record.
    """

    def __init__(self, url: str, slot: int = 0):
        self.local_addr = (source_address(slot), 0)
        parts = urlsplit(url)
        self.ws_url = (
            f"ws://{parts.hostname}:{parts.port}/socket.io/?EIO=4&transport=websocket"
        )
        self.ws: Any = None
        self.current_id: str | None = None
        self.record: StreamRecord | None = None
        self.ended: asyncio.Future | None = None
        self.reader: asyncio.Task | None = None
        self.counter = 0
        self.deflate = False  # the server accepted permessage-deflate

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            self.ws_url,
            # Offered, as browsers and socket.io-client offer it; a server that
            # accepts it pays for compressing every frame.
            compression="deflate",
            ping_interval=None,  # Engine.IO pings at its own level
            proxy=None,
            open_timeout=30,
            max_queue=None,
            local_addr=self.local_addr,
            # A browser's owner cookie: the relay keeps this client's chats.
            additional_headers={"Cookie": owner_cookie(self.local_addr[0])},
        )
        extensions = self.ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        self.deflate = "permessage-deflate" in extensions
        opening = await self.ws.recv()
        if not opening.startswith("0{"):
            raise RuntimeError(f"not an Engine.IO open packet: {opening[:80]!r}")
        await self.ws.send("40")
        while True:
            reply = await self.ws.recv()
            if reply.startswith("40"):
                break
            if reply.startswith("44"):
                raise RuntimeError(f"namespace refused: {reply[:200]}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loads = json.loads
        monotonic = time.monotonic
        try:
            async for message in self.ws:
                now = monotonic()
                if message == "2":
                    await self.ws.send("3")
                    continue
                if not message.startswith("42"):
                    continue  # acks (43…) and anything else carry nothing we measure
                name, data = loads(message[2:])[:2]
                record = self.record
                if record is None or data.get("id") != self.current_id:
                    continue
                if name == "chunk":
                    record.text_event(now, data["delta"])
                elif name == "done":
                    self._end(now, "done")
                elif name == "error":
                    self._end(now, data.get("code", "error"))
        except Exception:  # noqa: BLE001  (a dropped connection ends its stream)
            pass
        self._end(monotonic(), "closed")

    def _end(self, now: float, how: str) -> None:
        if self.record is not None and self.record.finish is None:
            self.record.end = now
            self.record.finish = how
            if self.ended is not None and not self.ended.done():
                self.ended.set_result(None)

    async def stream(self, job: Job, record: StreamRecord) -> None:
        self.counter += 1
        self.current_id = f"r{self.counter}"
        self.record = record
        self.ended = asyncio.get_running_loop().create_future()
        payload = {
            "id": self.current_id,
            "message": job.prompt,
            "options": {"max_tokens": job.max_tokens},
        }
        record.start = time.monotonic()
        await self.ws.send("42" + json.dumps(["chat", payload]))
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), job.stream_timeout)
        except TimeoutError:
            self._end(time.monotonic(), "timeout")
            with contextlib.suppress(Exception):
                await self.ws.send("42" + json.dumps(["stop", {"id": self.current_id}]))
        self.record = None

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self.reader is not None:
            self.reader.cancel()


class _HttpStreaming:
    """A client whose stream is one HTTP request read to its end (``_stream``): a
    stream that times out or breaks is recorded so, and its connection closed."""

    async def stream(self, job: Job, record: StreamRecord) -> None:
        try:
            await asyncio.wait_for(self._stream(job, record), job.stream_timeout)
        except TimeoutError:
            record.finish = record.finish or "timeout"
            await self.close()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            record.finish = record.finish or f"closed:{type(exc).__name__}"
            await self.close()
        if record.end is None:
            record.end = time.monotonic()

    async def _stream(self, job: Job, record: StreamRecord) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SseClient(_HttpStreaming):
    """A keep-alive HTTP/1.1 connection that POSTs a chat and reads its SSE reply.

    Handles chunked, Content-Length and close-delimited bodies: uvicorn and gunicorn
    both answer a streamed response with chunked encoding.
    """

    def __init__(self, url: str, slot: int = 0):
        self.local_addr = (source_address(slot), 0)
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        pass  # connections open at the first stream, as a browser's would

    async def _stream(self, job: Job, record: StreamRecord) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, local_addr=self.local_addr
            )
        body = json.dumps({"message": job.prompt, "max_tokens": job.max_tokens})
        request = (
            f"POST /chat HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        record.start = time.monotonic()
        self.writer.write(request.encode())
        reader = self.reader
        status = await reader.readline()
        if b" 200 " not in status:
            raise ValueError(f"HTTP status {status!r}")
        chunked, length, keep = False, None, True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                keep = False
        events = _SseParser(record)
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                events.feed(await reader.readexactly(size + 2), size)
        elif length is not None:
            events.feed(await reader.readexactly(length), length)
        else:
            keep = False
            while data := await reader.read(65536):
                events.feed(data, len(data))
        if record.finish is None:
            record.finish = "closed"
            record.end = time.monotonic()
        if not keep:
            await self.close()

    async def close(self) -> None:
        # No wait for the close to complete: this may run in a cancelled stream.
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


class _SseParser:
    def __init__(self, record: StreamRecord):
        self.record = record
        self.buffer = b""

    def feed(self, data: bytes, size: int) -> None:
        now = time.monotonic()
        self.buffer += data[:size]
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.record.finish = "done"
                    self.record.end = now
                else:
                    delta = json.loads(payload).get("delta")
                    if delta:
                        self.record.text_event(now, delta)


class OpenAIClient:
    """The official package's async client, straight at the upstream."""

    _shared: Any = None

    def __init__(self, url: str, api_key: str = "unused"):
        self.url = url
        self.api_key = api_key

    async def connect(self) -> None:
        if OpenAIClient._shared is None:
            from openai import AsyncOpenAI

            OpenAIClient._shared = AsyncOpenAI(
                base_url=self.url, api_key=self.api_key, max_retries=0, timeout=60
            )
        # One request per slot before the start: the package's lazy imports and
        # the pool's connections are then as warm as the relay's.
        await OpenAIClient._shared.models.list()

    async def stream(self, job: Job, record: StreamRecord) -> None:
        try:
            await asyncio.wait_for(self._stream(job, record), job.stream_timeout)
        except TimeoutError:
            record.finish = record.finish or "timeout"
        except Exception as exc:  # noqa: BLE001  (recorded, not fatal to the run)
            record.finish = record.finish or f"error:{type(exc).__name__}"
        if record.end is None:
            record.end = time.monotonic()

    async def _stream(self, job: Job, record: StreamRecord) -> None:
        record.start = time.monotonic()
        stream = await OpenAIClient._shared.chat.completions.create(
            model=job.model,
            messages=[{"role": "user", "content": job.prompt}],
            stream=True,
            max_tokens=job.max_tokens,
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    record.text_event(time.monotonic(), chunk.choices[0].delta.content)
        record.finish = "done"
        record.end = time.monotonic()

    async def close(self) -> None:
        if OpenAIClient._shared is not None:
            await OpenAIClient._shared.close()
            OpenAIClient._shared = None


class OpenAIHttpClient(_HttpStreaming):
    """The ``openai`` client's request, read with raw HTTP/1.1 on a keep-alive
    connection: each socket read's bytes are split into HTTP chunks and SSE events
    at once, and each event's ``choices[0].delta.content`` is taken from its JSON.

    Much cheaper per chunk than ``AsyncOpenAI`` (which builds a typed chunk object
    for every event), so the generators can read a thousand streams straight from
    the test server. It expects what that server and the relay send: a chunked
    reply, each event's ``data:`` its last field (the relay writes ``id:`` first).
    """

    endpoint = "/chat/completions"

    def __init__(self, url: str, slot: int = 0, api_key: str = "unused"):
        self.local_addr = (source_address(slot), 0)
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + self.endpoint
        self.models = parts.path.rstrip("/") + "/models"
        self.api_key = api_key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        # One request before the start, as AsyncOpenAI's pool is warmed.
        await self._open()
        assert self.writer is not None and self.reader is not None
        self.writer.write(self._head("GET", self.models, 0))
        length = await self._headers()
        await self.reader.readexactly(length or 0)

    async def _open(self) -> bool:
        """Have an open connection; whether it is one kept from before."""
        if self.writer is not None and not self.writer.is_closing():
            assert self.reader is not None
            if not self.reader.at_eof():
                return True
            # The server closed it while it was idle: gunicorn keeps an idle
            # connection for 2 s (``keepalive``), the test server for ever.
            self.writer.transport.abort()
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=self.local_addr
        )
        return False

    def _head(self, method: str, path: str, length: int) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    async def _headers(self) -> int | None:
        """Read a response's status and headers; its Content-Length, if any."""
        assert self.reader is not None
        status = await self.reader.readline()
        if not status:
            raise ConnectionResetError("closed before the response")
        if b" 200 " not in status:
            raise ValueError(f"HTTP status {status!r}")
        length = None
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return length
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)

    async def _stream(self, job: Job, record: StreamRecord) -> None:
        kept = await self._open()
        assert self.writer is not None
        fields = {"model": job.model} if job.model else {}
        body = json.dumps({**fields, **self._request(job)}).encode()
        request = self._head("POST", self.path, len(body)) + body
        record.start = time.monotonic()
        self.writer.write(request)
        try:
            await self._headers()
        except ConnectionError:
            if not kept:
                raise
            # The server closed the kept connection as the request went out: sent
            # again on a new one, as HTTP clients do on a stale pooled connection.
            await self.close()
            await self._open()
            assert self.writer is not None
            self.writer.write(request)
            await self._headers()
        assert self.reader is not None
        loads, monotonic = json.loads, time.monotonic
        raw = b""  # chunked body bytes not yet decoded
        events = b""  # decoded body bytes not yet split into SSE events
        body_done = False
        while not body_done:  # to the last chunk, so the connection can be reused
            data = await self.reader.read(65536)
            if not data:
                raise ValueError("connection closed mid-stream")
            now = monotonic()
            raw += data
            while not body_done:  # HTTP chunks: size line, data, CRLF
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(raw[:line_end].split(b";")[0], 16)
                if len(raw) < line_end + 2 + size + 2:
                    break
                events += raw[line_end + 2 : line_end + 2 + size]
                raw = raw[line_end + 2 + size + 2 :]
                body_done = size == 0  # (the test server sends no trailers)
            while (end := events.find(b"\n\n")) >= 0:
                event, events = events[:end], events[end + 2 :]
                if record.finish is not None:
                    continue
                if event.startswith(b"data:"):
                    payload = event[5:].strip()
                else:  # "id: <seq>" first, or a comment (keep-alive) alone
                    field = event.find(b"\ndata:")
                    if field < 0:
                        continue
                    payload = event[field + 6 :].strip()
                self._read(payload, record, now, loads)
        if record.finish is None:
            record.finish, record.end = "closed", monotonic()

    def _request(self, job: Job) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": job.prompt}],
            "stream": True,
            "max_tokens": job.max_tokens,
        }

    @staticmethod
    def _read(payload: bytes, record: StreamRecord, now: float, loads: Any) -> None:
        """One event's ``data``: its text, or the stream's end."""
        if payload == b"[DONE]":
            record.finish, record.end = "done", now
            return
        choices = loads(payload).get("choices")
        if choices:
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                record.text_event(now, content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


class ResponsesHttpClient(OpenAIHttpClient):
    """The same reader for the Responses API (``POST /v1/responses``): the text of
    each ``response.output_text.delta`` event, to ``response.completed``."""

    endpoint = "/responses"

    def _request(self, job: Job) -> dict[str, Any]:
        return {
            "input": job.prompt,
            "stream": True,
            "max_output_tokens": job.max_tokens,
        }

    @staticmethod
    def _read(payload: bytes, record: StreamRecord, now: float, loads: Any) -> None:
        event = loads(payload)
        kind = event.get("type")
        if kind == "response.output_text.delta":
            if event["delta"]:
                record.text_event(now, event["delta"])
        elif kind in ("response.completed", "response.incomplete"):
            record.finish, record.end = "done", now
        elif kind == "response.failed":
            record.finish, record.end = event["response"]["error"]["code"], now


CLIENTS = {"sio": SioClient, "sse": SseClient, "openai": OpenAIClient}
HTTP_READERS = {"openai-http": OpenAIHttpClient, "responses-http": ResponsesHttpClient}


# -- one process's phase ---------------------------------------------------------------


class _LagProbe:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.recording = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK)
            if self.recording:
                self.lags.append(loop.time() - before - LAG_TICK)


async def _phase(job: Job, conn: Any) -> dict[str, Any]:
    rng = random.Random(job.seed)
    slots = range(job.first_slot, job.first_slot + job.slots)
    if job.kind == "openai":
        clients = [OpenAIClient(job.url, job.api_key) for _ in slots]
    elif job.kind in HTTP_READERS:
        reader = HTTP_READERS[job.kind]
        clients = [reader(job.url, slot, job.api_key) for slot in slots]
    else:
        clients = [CLIENTS[job.kind](job.url, slot) for slot in slots]
    failures: list[str] = []

    opened: list[Any] = []

    async def open_one(client: Any) -> None:
        try:
            await client.connect()
            opened.append(client)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{type(exc).__name__}: {exc}"[:200])

    async def open_all() -> None:
        for start in range(0, len(clients), 50):
            await asyncio.gather(*(open_one(c) for c in clients[start : start + 50]))

    opening = asyncio.create_task(open_all())
    done, _ = await asyncio.wait([opening], timeout=CONNECT_DEADLINE)
    if not done:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
    late = [c for c in clients if c not in opened]
    failures.extend(["not connected in time"] * (len(late) - len(failures)))
    if job.kind != "openai":  # its clients share one pool: nothing to close
        await asyncio.gather(*(c.close() for c in late), return_exceptions=True)
    clients = opened
    loop = asyncio.get_running_loop()
    go = await loop.run_in_executor(
        None, _ready_then_wait, conn, len(clients), failures
    )
    probe = _LagProbe()
    probe_task = asyncio.create_task(probe.run())
    measured: list[StreamRecord] = []
    everything: list[StreamRecord] = []
    window = [go + job.warmup, go + max(job.duration, job.warmup)]
    cpu = {}

    async def sleep_until(moment: float) -> None:
        delay = moment - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def meter() -> None:
        await sleep_until(window[0])
        probe.recording = True
        cpu["start"] = cpu_seconds()
        await sleep_until(window[1])
        cpu["end"] = cpu_seconds()
        probe.recording = False

    async def slot(client: Any) -> None:
        if job.mode == "burst":
            await sleep_until(go)
            record = StreamRecord(start=time.monotonic())
            everything.append(record)
            await client.stream(job, record)
            measured.append(record)
            return
        await sleep_until(go + rng.uniform(0, job.stagger))
        while time.monotonic() < go + job.duration:
            record = StreamRecord(start=time.monotonic())
            everything.append(record)
            await client.stream(job, record)
            if record.start >= window[0]:
                measured.append(record)

    if job.mode == "idle":
        await sleep_until(go)
    elif job.mode == "burst":
        window = [go, go]
        probe.recording = True
        cpu["start"] = cpu_seconds()
        await asyncio.gather(*(slot(c) for c in clients))
        cpu["end"] = cpu_seconds()
        window[1] = time.monotonic()
        probe.recording = False
    else:
        await asyncio.gather(meter(), *(slot(c) for c in clients))
    measured_all = False
    if job.mode == "sustained" and not measured and everything:
        # The server was so slow that no stream started inside the window: judge
        # it by the warm-up streams rather than by nothing.
        measured, measured_all = everything, True
    probe_task.cancel()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    wall = max(window[1] - window[0], 1e-9)
    groups: list[list[StreamRecord]] = [[] for _ in range(job.parts)]
    for record in measured:
        index = int((record.start - window[0]) / wall * job.parts)
        groups[min(max(index, 0), job.parts - 1)].append(record)
    result: dict[str, Any] = {"parts": [_summarise(job, group) for group in groups]}
    # Throughput: every token that arrived inside the window, whichever stream.
    result["window_tokens"] = sum(
        1 for r in everything for t in r.arrivals if window[0] <= t <= window[1]
    )
    result.update(
        slots=len(clients),
        deflate_connections=sum(getattr(c, "deflate", False) for c in clients),
        connect_failures=len(failures),
        connect_errors=failures[:5],
        window_s=round(wall, 3),
        measured_warmup_streams=measured_all,
        cpu_cores=round((cpu["end"] - cpu["start"]) / wall, 3) if cpu else None,
        loop_lag_p99_ms=_ms(percentile(probe.lags, 99)),
        loop_lag_max_ms=_ms(max(probe.lags, default=None)),
    )
    return result


def _ready_then_wait(conn: Any, connected: int, failures: list[str]) -> float:
    conn.send(("ready", {"connected": connected, "failures": len(failures)}))
    message, go = conn.recv()
    assert message == "go", message
    return go


def _summarise(job: Job, records: list[StreamRecord]) -> dict[str, Any]:
    expected_tokens = len(job.expected_text.split())
    ttft, gaps, lateness, durations = [], [], [], []
    finishes: dict[str, int] = {}
    complete = delivered = events = 0
    for record in records:
        finishes[record.finish or "none"] = finishes.get(record.finish or "none", 0) + 1
        text = "".join(record.parts)
        if record.finish == "done" and text == job.expected_text:
            complete += 1
        delivered += min(len(record.arrivals), expected_tokens)
        events += len(record.chunk_times)
        if record.first is not None:
            ttft.append(record.first - record.start)
        if record.end is not None:
            durations.append(record.end - record.start)
        times = record.chunk_times
        gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
        if record.arrivals and job.rate > 0:
            # Lateness of token k: how much later than the stream's best-kept pace
            # it arrived. offsets_k = arrival_k - k/rate; the smallest offset is the
            # schedule's anchor, so the best-paced token has lateness 0.
            offsets = [t - k / job.rate for k, t in enumerate(record.arrivals)]
            anchor = min(offsets)
            lateness.extend(o - anchor for o in offsets)
    return {
        "streams": len(records),
        "complete": complete,
        "finishes": finishes,
        "tokens_expected": expected_tokens * len(records),
        "tokens_delivered": delivered,
        "events": events,
        "ttft": ttft,
        "gaps": gaps,
        "lateness": lateness,
        "durations": durations,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _main(conn: Any, job_fields: dict[str, Any]) -> None:
    job = Job(**job_fields)
    try:
        result = asyncio.run(_phase(job, conn))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent instead)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("result", result))


# -- the parent's side -------------------------------------------------------------


class Generators:
    """Several generator processes running one phase together.

    ``start`` spawns them and waits until every client is connected; ``go`` starts
    the phase at the same moment in all of them (CLOCK_MONOTONIC is machine-wide);
    ``results`` collects what each reports.
    """

    def __init__(self, job: Job, processes: int):
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        shares = [
            job.slots // processes + (i < job.slots % processes)
            for i in range(processes)
        ]
        first = 0
        for index, share in enumerate(s for s in shares if s > 0):
            parent, child = context.Pipe()
            fields = asdict(job) | {
                "slots": share,
                "seed": job.seed * 100 + index,
                "first_slot": first,
            }
            first += share
            proc = context.Process(target=_main, args=(child, fields), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, timeout: float = 120) -> dict[str, int]:
        connected = failures = 0
        for pipe in self.pipes:
            message, data = self._recv(pipe, timeout)
            if message != "ready":
                raise RuntimeError(f"generator failed before the start: {data}")
            connected += data["connected"]
            failures += data["failures"]
        return {"connected": connected, "failures": failures}

    def go(self, delay: float = 0.5) -> float:
        moment = time.monotonic() + delay
        for pipe in self.pipes:
            pipe.send(("go", moment))
        return moment

    def results(self, timeout: float) -> list[dict[str, Any]]:
        results = []
        for pipe in self.pipes:
            message, data = self._recv(pipe, timeout)
            if message != "result":
                raise RuntimeError(f"generator failed: {data}")
            results.append(data)
        for proc in self.procs:
            proc.join(10)
        return results

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

    @staticmethod
    def _recv(pipe: Any, timeout: float) -> tuple[str, Any]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"no word from a generator process in {timeout:.0f} s")
        return pipe.recv()


def _pool(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    pooled: dict[str, Any] = {}
    for key in ("ttft", "gaps", "lateness", "durations"):
        pooled[key] = [v for s in summaries for v in s[key]]
    for key in ("streams", "complete", "tokens_expected", "tokens_delivered"):
        pooled[key] = sum(s[key] for s in summaries)
    pooled["events"] = sum(s["events"] for s in summaries)
    finishes: dict[str, int] = {}
    for summary in summaries:
        for name, count in summary["finishes"].items():
            finishes[name] = finishes.get(name, 0) + count
    pooled["finishes"] = finishes
    return pooled


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's reports from all generator processes, pooled, and per part."""
    merged = _pool([part for r in results for part in r["parts"]])
    count = len(results[0]["parts"])
    merged["parts"] = [_pool([r["parts"][i] for r in results]) for i in range(count)]
    for key in ("slots", "deflate_connections", "connect_failures", "window_tokens"):
        merged[key] = sum(r[key] for r in results)
    merged["measured_warmup_streams"] = any(
        r["measured_warmup_streams"] for r in results
    )
    window = max(r["window_s"] for r in results)
    merged["window_tokens_per_s"] = round(merged["window_tokens"] / window, 1)
    merged["connect_errors"] = [e for r in results for e in r["connect_errors"]][:5]
    merged["generators"] = [
        {
            "cpu_cores": r["cpu_cores"],
            "loop_lag_p99_ms": r["loop_lag_p99_ms"],
            "loop_lag_max_ms": r["loop_lag_max_ms"],
            "window_s": r["window_s"],
        }
        for r in results
    ]
    return merged
