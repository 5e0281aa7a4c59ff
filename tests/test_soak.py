"""Soak: many clients, several turns each, with random stops, disconnects and resumes.

Every answer must arrive whole, in order, once, and only at its own client; afterwards
the server holds no per-request state. The default run is short; ``--soak-long`` runs
200 clients for 60 s.
"""

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import socketio

from app.providers.demo import compose, split_tokens

from .conftest import DEFAULT_ASYNC_MODE, UNLIMITED, Relay


@dataclass
class Tally:
    turns: int = 0
    stops: int = 0
    resumes: int = 0
    abandons: int = 0
    chunks: int = 0
    problems: list[str] = field(default_factory=list)


class User:
    """One simulated user: a connection, a conversation, and what it received."""

    def __init__(self, url: str, number: int, rng: random.Random, tally: Tally):
        self.url = url
        self.number = number
        self.rng = rng
        self.tally = tally
        self.history: list[dict[str, str]] = []
        self.stopped: set[str] = set()

    async def connect(self) -> tuple[socketio.AsyncClient, asyncio.Queue]:
        sio = socketio.AsyncClient(reconnection=False)
        events: asyncio.Queue = asyncio.Queue()
        for name in ("chunk", "done", "error"):
            sio.on(name, lambda data, name=name: events.put_nowait((name, data)))
        await sio.connect(self.url, transports=["websocket"], wait_timeout=20)
        return sio, events

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.tally.problems.append(f"user {self.number}: {problem}")

    async def next_event(self, events: asyncio.Queue, request_id: str):
        """The next event for ``request_id``; checks that nothing else arrives."""
        while True:
            name, data = await asyncio.wait_for(events.get(), 20)
            if data.get("id") == request_id:
                return name, data
            # A stop that raced with the end of its answer is refused, late.
            late_stop = (
                name == "error"
                and data.get("code") == "unknown_id"
                and data.get("id") in self.stopped
            )
            self.check(late_stop, f"foreign event {data}")

    async def run(self, until: float) -> None:
        sio, events = await self.connect()
        turn = 0
        while time.monotonic() < until:
            turn += 1
            request_id = f"u{self.number}-t{turn}"
            prompt = f"User {self.number} asks question {turn} about soak testing"
            messages = [*self.history, {"role": "user", "content": prompt}]
            expected = split_tokens(compose(messages))
            action = self.rng.choices(
                ["answer", "stop", "resume", "abandon"], weights=[6, 2, 2, 1]
            )[0]
            ack = await sio.call("chat", {"id": request_id, "messages": messages})
            if not ack.get("ok"):
                self.check(False, f"{request_id} refused: {ack}")
                break
            received: dict[int, str] = {}
            # Act once this much of the text has arrived (chunks may carry several
            # tokens when the server coalesces, so count characters).
            cut_at = self.rng.randint(1, max(1, len("".join(expected)) - 1))
            acted = False
            end = None
            while end is None:
                name, data = await self.next_event(events, request_id)
                if name == "chunk":
                    self.check(data["seq"] not in received, f"dup seq {data['seq']}")
                    received[data["seq"]] = data["delta"]
                    due = not acted and sum(map(len, received.values())) >= cut_at
                    if due and action == "stop":
                        acted = True
                        self.stopped.add(request_id)
                        await sio.emit("stop", {"id": request_id})
                    elif due and action in ("resume", "abandon"):
                        break
                else:
                    end = (name, data)
            if end is None:
                # Leave mid-stream; come back and resume, or never come back.
                await sio.disconnect()
                sio, events = await self.connect()
                if action == "abandon":
                    self.tally.abandons += 1
                    continue
                self.tally.resumes += 1
                after = max(received)
                ack = await sio.call(
                    "resume",
                    {"id": request_id, "token": ack["resume_token"], "after": after},
                )
                self.check(ack.get("ok") is True, f"resume refused: {ack}")
                while end is None:
                    name, data = await self.next_event(events, request_id)
                    if name == "chunk":
                        self.check(data["seq"] not in received, "dup after resume")
                        received[data["seq"]] = data["delta"]
                    else:
                        end = (name, data)

            name, data = end
            self.tally.turns += 1
            self.tally.chunks += len(received)
            seqs = sorted(received)
            self.check(seqs == list(range(len(seqs))), f"{request_id} gap in seq")
            text = "".join(received[s] for s in seqs)
            if action == "stop" and data.get("finish_reason") == "cancelled":
                self.tally.stops += 1
                self.check("".join(expected).startswith(text), "stopped text differs")
                self.history = [*messages, {"role": "assistant", "content": text}]
            else:
                self.check(name == "done", f"{request_id} ended with {data}")
                self.check(text == "".join(expected), f"{request_id} text differs")
                self.history = [*messages, {"role": "assistant", "content": text}]
            # Keep conversations short enough for the prompt limit.
            self.history = self.history[-6:]
        await sio.disconnect()


def worker_rss_kb(relay: Relay) -> int:
    master = relay.process.proc.pid
    with open(f"/proc/{master}/task/{master}/children") as children:
        worker = int(children.read().split()[0])
    with open(f"/proc/{worker}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def soak_relay(tmp_session):
    """A relay on a fast demo model, in the default async mode."""
    server = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        {
            "LLM_PROVIDER": "demo",
            "DEMO_TTFT": "0.05",
            "DEMO_TOKENS_PER_SECOND": "100",
            "RESUME_GRACE_SECONDS": "3",
            **UNLIMITED,
        },
    )
    yield server
    server.process.stop()


async def soak(url: str, users: int, seconds: float, seed: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    crowd = [User(url, n, random.Random(seed + n), tally) for n in range(users)]
    await asyncio.gather(*(user.run(until) for user in crowd))
    return tally


def run_soak(url: str, users: int, seconds: float, seed: int) -> Tally:
    """Run ``soak`` on an event loop of its own thread (the browser tests' Playwright
    keeps one running on the main thread)."""
    result: list[Tally] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(soak(url, users, seconds, seed)))
    )
    thread.start()
    thread.join()
    assert result, "the soak run failed; see the traceback above"
    return result[0]


def wait_for_no_state(relay: Relay, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = relay.health()
        if health["streams"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.25)


def test_soak_loses_duplicates_and_misdelivers_nothing(soak_relay, request):
    long = request.config.getoption("--soak-long")
    users, seconds = (200, 60.0) if long else (40, 8.0)

    # A first round grows the worker's pools; its memory afterwards is the baseline.
    run_soak(soak_relay.url, users, 2.0, seed=1)
    wait_for_no_state(soak_relay)
    baseline = worker_rss_kb(soak_relay)

    tally = run_soak(soak_relay.url, users, seconds, seed=1000)
    health = wait_for_no_state(soak_relay)
    after = worker_rss_kb(soak_relay)
    print(
        f"\nsoak: {users} users, {seconds:.0f} s, {tally.turns} turns, "
        f"{tally.chunks} chunks, {tally.stops} stops, {tally.resumes} resumes, "
        f"{tally.abandons} abandons; worker RSS {baseline} kB -> {after} kB"
    )
    assert tally.problems == []
    assert tally.turns >= users * 2
    assert tally.stops and tally.resumes and tally.abandons
    assert health["streams"] == 0
    assert health["live_streams"] == 0
    # Freed per-request state: memory settles near the warmed-up baseline.
    assert after < baseline * 1.5 + 20_000
