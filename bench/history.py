"""The conversation store under a heavy user: 10,000 conversations of 20 messages
each, all one owner's; the latency of listing them (the first page of 50, and one
half-way down) and of searching them (a word in nearly every message, one in about
700 conversations, one in five), of reading a conversation and its current branch,
and of adding a message, on SQLite and on PostgreSQL (a server of its own, fsync
on).

The conversations are written in bulk (that is not what is measured); each figure is
then one store call at a time, repeated: p50 and p99 in ms.

    python -m bench.history [--conversations 10000] [--messages 20] [--repeats 200]
                            [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.history import Store, new_id
from app.history.models import conversations, messages

from .postgres import PostgresServer
from .procstat import percentile
from .servers import LOGS, unwind_on_signals

OWNER = "heavy-user"
WORDS_PER_MESSAGE = 40
VOCABULARY = 20_000
# Planted words: one in five conversations' answers.
RARE = "quokkaberry"
RARE_CONVERSATIONS = 5


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choices(letters, k=rng.randint(3, 10))))
    return sorted(words)


def fill(store: Store, count: int, per: int, rng: random.Random) -> dict[str, str]:
    """Write ``count`` conversations of ``per`` messages (a chain, user and assistant
    in turn), words drawn by Zipf's law; return the words to search."""
    words = vocabulary(rng)
    cumulative = list(
        itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1))
    )
    rare_in = set(rng.sample(range(count), RARE_CONVERSATIONS))
    start = datetime.now(UTC) - timedelta(days=365)
    batch = 100
    for first in range(0, count, batch):
        chats, rows = [], []
        for n in range(first, min(first + batch, count)):
            created = start + timedelta(minutes=50 * n)
            cid = new_id()
            parent = None
            for i in range(per):
                mid = new_id()
                text = " ".join(
                    rng.choices(words, cum_weights=cumulative, k=WORDS_PER_MESSAGE)
                )
                if n in rare_in and i == per - 1:
                    text += f" {RARE}"
                rows.append(
                    {
                        "id": mid,
                        "conversation_id": cid,
                        "parent_id": parent,
                        "role": "user" if i % 2 == 0 else "assistant",
                        "text": text,
                        "created_at": created + timedelta(seconds=i),
                    }
                )
                parent = mid
            chats.append(
                {
                    "id": cid,
                    "owner": OWNER,
                    "title": rows[-per]["text"][:60],
                    "model": "demo",
                    "created_at": created,
                    "updated_at": created + timedelta(seconds=per),
                    "current_leaf_id": parent,
                }
            )
        with store.engine.begin() as connection:
            connection.execute(conversations.insert(), chats)
            connection.execute(messages.insert(), rows)
    with store.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "ANALYZE"
        )
    # The most frequent word (in nearly every message), the 1000th (in about one
    # conversation in fourteen), and the planted one.
    return {"common": words[0], "uncommon": words[999], "rare": RARE}


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    call()  # warm the caches and the pool
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    p50, p99 = percentile(seconds, 50), percentile(seconds, 99)
    assert p50 is not None and p99 is not None
    return round(p50 * 1000, 2), round(p99 * 1000, 2)


def matching(store: Store, word: str) -> int:
    """How many conversations the search finds, every page."""
    found, cursor = 0, None
    while True:
        page = store.list(OWNER, limit=100, before=cursor, q=word)
        found += len(page.conversations)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def measure(name: str, url: str, args: argparse.Namespace) -> None:
    store = Store.open(url, pool_size=2)
    try:
        began = time.monotonic()
        terms = fill(store, args.conversations, args.messages, random.Random(7))
        print(f"{name}.fill_s: {time.monotonic() - began:.1f}")
        figures: dict[str, Callable[[], object]] = {}
        figures["list"] = lambda: store.list(OWNER, limit=50)
        # A page half-way down: what scrolling far costs.
        cursor = None
        for _ in range(args.conversations // 100):
            cursor = store.list(OWNER, limit=50, before=cursor).next_cursor
        figures["list_far"] = lambda: store.list(OWNER, limit=50, before=cursor)
        for kind, word in terms.items():
            figures[f"search_{kind}"] = lambda w=word: store.list(OWNER, q=w)
        for kind, word in terms.items():
            print(f"{name}.search_{kind}.conversations: {matching(store, word)}")
        page = store.list(OWNER, limit=1).conversations[0]
        figures["get"] = lambda: store.get(OWNER, page.id)
        figures["branch"] = lambda: store.branch(OWNER, page.id)
        chat = store.create_conversation(OWNER, "demo")
        figures["add_message"] = lambda: store.add_message(
            OWNER, chat.id, None, "user", "One more question about the tides"
        )
        for figure, call in figures.items():
            p50, p99 = timed(call, args.repeats)
            print(f"{name}.{figure}_p50_ms: {p50}")
            print(f"{name}.{figure}_p99_ms: {p99}")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    unwind_on_signals()
    LOGS.mkdir(parents=True, exist_ok=True)
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="chatstream-bench-") as folder:
                path = Path(folder) / "history.db"
                measure("sqlite", f"sqlite:///{path}", args)
                size = sum(p.stat().st_size for p in Path(folder).iterdir())
                print(f"sqlite.database_mb: {size / 2**20:.0f}")
        elif backend == "postgresql":
            server = PostgresServer(LOGS, durable=True)
            try:
                measure("postgresql", server.url, args)
            finally:
                server.close()
        else:
            parser.error(f"unknown backend {backend!r}")


if __name__ == "__main__":
    main()
