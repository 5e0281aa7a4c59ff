"""The conversation store, on a real SQLite file and a real PostgreSQL server: trees
of messages that keep every answer, owners that never see each other's
conversations, search, export and import, migrations, and failures that end in a
``StoreError`` instead of a hang."""

import json
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.history import (
    Conversation,
    InvalidInput,
    NotFound,
    Store,
    StoreError,
    new_id,
)
from app.history.db import current_revision, normalize_url
from app.history.models import VERSION_TABLE, metadata
from bench.postgres import PostgresServer

from .conftest import ROOT, wait_until

BACKENDS = ["sqlite", "postgresql"]
# A 1×1 PNG, and another image, as data URLs.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
    "2mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
GIF = "data:image/gif;base64,R0lGODlhAQABAAAAACw="


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database on ``server``, dropped afterwards."""
    name = "test_" + secrets.token_hex(6)
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> Iterator[str]:
    """An empty database: an SQLite file, or a database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/history.db"
    else:
        with fresh_database(request.getfixturevalue("postgres")) as database:
            yield database


@pytest.fixture
def store(url) -> Iterator[Store]:
    opened = Store.open(url)
    yield opened
    opened.close()


def turn(store: Store, owner: str, conversation: Conversation, parent, text: str):
    """A user message and its answer; returns both."""
    question = store.add_message(owner, conversation.id, parent, "user", text)
    answer = store.finish_message(
        owner,
        conversation.id,
        new_id(),
        question.id,
        f"Answer to {text}",
        finish_reason="stop",
    )
    return question, answer


def texts(messages) -> list[str]:
    return [message.content for message in messages]


def test_continuing_a_conversation_builds_the_history_root_to_leaf(store):
    chat = store.create_conversation("alice", "demo")
    first, answer = turn(store, "alice", chat, None, "How do tides work?")
    second, answer2 = turn(store, "alice", chat, answer.id, "And on lakes?")

    assert texts(store.branch("alice", chat.id)) == [
        "How do tides work?",
        "Answer to How do tides work?",
        "And on lakes?",
        "Answer to And on lakes?",
    ]
    kept = store.get("alice", chat.id)
    assert kept.title == "How do tides work?"
    assert kept.current_leaf_id == answer2.id
    assert [m.parent_id for m in kept.messages] == [
        None,
        first.id,
        answer.id,
        second.id,
    ]
    assert [m.role for m in kept.messages] == ["user", "assistant"] * 2
    assert kept.updated_at == answer2.created_at > chat.updated_at


def test_the_title_is_the_first_user_message_cut_at_a_word(store):
    chat = store.create_conversation("alice", "demo")
    long = "How do  tides work in the\nNorth Sea and elsewhere on this planet, today?"
    store.add_message("alice", chat.id, None, "user", long)
    store.add_message("alice", chat.id, None, "user", "A second question")
    expected = "How do tides work in the North Sea and elsewhere on this…"
    assert store.get("alice", chat.id).title == expected
    assert store.list("alice").conversations[0].title == expected
    named = store.create_conversation("alice", "demo", title="My own title")
    store.add_message("alice", named.id, None, "user", "Anything")
    assert store.get("alice", named.id).title == "My own title"


def test_regenerate_and_edit_keep_every_earlier_answer(store):
    chat = store.create_conversation("alice", "demo")
    question, first = turn(store, "alice", chat, None, "Name a river")
    # Regenerate: a second answer to the same question.
    second = store.finish_message(
        "alice", chat.id, new_id(), question.id, "The Loire", finish_reason="stop"
    )
    # Edit the question: a sibling of it, answered in its turn.
    edited, third = turn(store, "alice", chat, None, "Name a lake")
    follow_up, fourth = turn(store, "alice", chat, first.id, "Where is it?")

    kept = store.get("alice", chat.id)
    assert texts(kept.messages) == [
        "Name a river",
        "Answer to Name a river",
        "The Loire",
        "Name a lake",
        "Answer to Name a lake",
        "Where is it?",
        "Answer to Where is it?",
    ]
    assert texts(store.branch("alice", chat.id, second.id)) == [
        "Name a river",
        "The Loire",
    ]
    assert texts(store.branch("alice", chat.id, third.id)) == [
        "Name a lake",
        "Answer to Name a lake",
    ]
    assert texts(store.branch("alice", chat.id)) == [
        "Name a river",
        "Answer to Name a river",
        "Where is it?",
        "Answer to Where is it?",
    ]
    # The title stays the first question's.
    assert kept.title == "Name a river"


def test_owners_never_see_each_others_conversations(store):
    chat = store.create_conversation("alice", "demo")
    question, answer = turn(store, "alice", chat, None, "Tell me about heliotropes")
    store.create_conversation("bob", "demo")

    missing = new_id()
    calls = [
        lambda cid: store.get("bob", cid),
        lambda cid: store.branch("bob", cid),
        lambda cid: store.export("bob", cid, "md"),
        lambda cid: store.export("bob", cid, "json"),
        lambda cid: store.rename("bob", cid, "Mine now"),
        lambda cid: store.add_message("bob", cid, answer.id, "user", "Hi"),
        lambda cid: store.delete("bob", cid),
    ]
    for call in calls:
        with pytest.raises(NotFound) as theirs:
            call(chat.id)
        with pytest.raises(NotFound) as nobodys:
            call(missing)
        # The same answer as for an id that does not exist: nothing is revealed.
        assert str(theirs.value) == str(nobodys.value)
    assert [c.id for c in store.list("bob").conversations] != [chat.id]
    assert store.list("bob", q="heliotropes").conversations == []

    kept = store.get("alice", chat.id)
    assert kept.title == "Tell me about heliotropes"
    assert texts(kept.messages) == [
        "Tell me about heliotropes",
        "Answer to Tell me about heliotropes",
    ]


def test_search_finds_a_word_from_an_answer_for_its_owner_only(store):
    mine = store.create_conversation("alice", "demo")
    question = store.add_message("alice", mine.id, None, "user", "Which flower?")
    store.finish_message(
        "alice",
        mine.id,
        new_id(),
        question.id,
        "The Heliotrope turns toward the sun.",
        finish_reason="stop",
    )
    other = store.create_conversation("alice", "demo", title="Gardening plans")
    theirs = store.create_conversation("bob", "demo")
    store.add_message("bob", theirs.id, None, "user", "Bake marzipan heliotrope")

    def found(owner: str, q: str) -> list[str]:
        return [c.id for c in store.list(owner, q=q).conversations]

    assert found("alice", "heliotrope") == [mine.id]
    assert found("alice", "HELIOTROPE sun") == [mine.id]
    assert found("alice", '"toward the sun"') == [mine.id]
    assert found("alice", '"the sun toward"') == []
    assert found("alice", "gardening") == [other.id]
    assert found("alice", "gardening or heliotrope") == [other.id, mine.id]
    assert found("alice", "marzipan") == []
    assert found("bob", "heliotrope") == [theirs.id]
    # Whole words only, and no input is a syntax error.
    assert found("alice", "helio") == []
    for q in ['"unbalanced', "AND(", "NEAR(a b)", "*", "title:sun", "-", "!!!"]:
        assert isinstance(found("alice", q), list)


def test_search_for_a_word_in_most_messages_finds_each_owners_own(store):
    # Bob's 2500 messages all say "weather": a word in most messages of the
    # database, which SQLite's search checks conversation by conversation.
    chatter = [
        {
            "id": f"m{i}",
            "parent_id": f"m{i - 1}" if i else None,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"weather report {i}",
            "created_at": "2026-01-01T00:00:00+00:00",
        }
        for i in range(2500)
    ]
    bobs = store.import_json(
        "bob",
        {
            "format": "chatstream.conversation",
            "version": 1,
            "title": None,
            "model": "demo",
            "created_at": "2026-01-01T00:00:00+00:00",
            "updated_at": "2026-01-01T00:00:00+00:00",
            "current_leaf_id": "m2499",
            "messages": chatter,
        },
    )
    oldest = store.create_conversation("alice", "demo")
    store.add_message("alice", oldest.id, None, "user", "Nice weather today")
    for n in range(320):
        store.create_conversation("alice", "demo", title=f"Chat {n}")
    assert [c.id for c in store.list("alice", q="weather").conversations] == [oldest.id]
    assert [c.id for c in store.list("bob", q="weather").conversations] == [bobs.id]
    newest = store.create_conversation("alice", "demo", title="More weather")
    newer = store.create_conversation("alice", "demo", title="Weather again")
    found, cursor = [], None
    while True:
        page = store.list("alice", limit=1, q="weather", before=cursor)
        found += [c.id for c in page.conversations]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert found == [newer.id, newest.id, oldest.id]


def test_list_is_newest_first_and_pages_with_a_cursor(store):
    chats = [store.create_conversation("alice", "demo") for _ in range(5)]
    # Talking in the oldest moves it to the top.
    store.add_message("alice", chats[0].id, None, "user", "Back again")
    expected = [chats[0].id] + [c.id for c in reversed(chats[1:])]

    seen, cursor = [], None
    while True:
        page = store.list("alice", limit=2, before=cursor)
        seen += [c.id for c in page.conversations]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert store.list("alice").conversations[0].title == "Back again"
    with pytest.raises(InvalidInput, match="before"):
        store.list("alice", before="not-a-cursor")
    with pytest.raises(InvalidInput, match="limit"):
        store.list("alice", limit=0)


def test_rename_and_delete(store):
    chat = store.create_conversation("alice", "demo")
    turn(store, "alice", chat, None, "Plan a picnic")
    kept = store.create_conversation("alice", "demo", title="Other")

    assert store.rename("alice", chat.id, "  Picnic\nplans ").title == "Picnic plans"
    assert store.list("alice", q="picnic").conversations[0].title == "Picnic plans"
    with pytest.raises(InvalidInput, match="title"):
        store.rename("alice", chat.id, " ")

    store.delete("alice", chat.id)
    with pytest.raises(NotFound):
        store.get("alice", chat.id)
    assert [c.id for c in store.list("alice").conversations] == [kept.id]
    assert store.list("alice", q="picnic").conversations == []
    with store.engine.connect() as connection:
        left = connection.execute(sa.text("SELECT count(*) FROM messages")).scalar()
        if store.dialect == "sqlite":
            # The search indexes dropped what was deleted (else a reused rowid
            # would match the old words).
            for table in ("conversations_fts", "messages_fts"):
                connection.exec_driver_sql(
                    f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"
                )
    assert left == 0


def test_images_are_stored_once_by_reference(store):
    chat = store.create_conversation("alice", "demo")
    other = store.create_conversation("alice", "demo")
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
    ]
    first = store.add_message("alice", chat.id, None, "user", parts)
    store.add_message("alice", other.id, None, "user", parts)

    sha = first.content[1]["image_url"]["url"].removeprefix("blob:")
    assert first.content[1] == {
        "type": "image_url",
        "image_url": {"url": f"blob:{sha}", "detail": "low"},
    }
    assert store.get("alice", chat.id).messages[0].content == first.content
    assert store.get("alice", chat.id, data_urls=True).messages[0].content == parts
    assert store.branch("alice", chat.id, data_urls=True)[0].content == parts
    assert store.blob("alice", sha).data_url() == PNG
    assert store.get("alice", chat.id).title == "What is this?"

    # The page may send a stored image back by reference; nobody else may.
    again = [{"type": "image_url", "image_url": {"url": f"blob:{sha}"}}]
    store.add_message("alice", chat.id, first.id, "user", again)
    bobs = store.create_conversation("bob", "demo")
    with pytest.raises(InvalidInput, match="content"):
        store.add_message("bob", bobs.id, None, "user", again)
    with pytest.raises(NotFound):
        store.blob("bob", sha)

    def stored_images() -> int:
        with store.engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM blobs")).scalar()

    assert stored_images() == 1
    store.delete("alice", chat.id)
    # Still shown by the other conversation.
    assert store.get("alice", other.id, data_urls=True).messages[0].content == parts
    assert stored_images() == 1
    store.delete("alice", other.id)
    assert stored_images() == 0


def full_conversation(store: Store, owner: str) -> Conversation:
    """A conversation with every kind of field: branches, an image, reasoning, a
    tool call and its result, usage, timing, an error."""
    chat = store.create_conversation(owner, "demo-reasoning")
    question = store.add_message(
        owner,
        chat.id,
        None,
        "user",
        [
            {"type": "text", "text": "Weather in Paris? See the map."},
            {"type": "image_url", "image_url": {"url": GIF}},
        ],
    )
    call = store.finish_message(
        owner,
        chat.id,
        new_id(),
        question.id,
        "",
        finish_reason="tool_calls",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
        reasoning="The user wants the weather.",
        model="demo-reasoning",
    )
    result = store.add_message(
        owner, chat.id, call.id, "tool", "18 °C, sunny", tool_call_id="call_1"
    )
    store.finish_message(
        owner,
        chat.id,
        new_id(),
        result.id,
        "It is 18 °C and sun",
        finish_reason="error",
        error={"code": "upstream_unavailable", "message": "the model went away"},
    )
    store.finish_message(
        owner,
        chat.id,
        new_id(),
        result.id,
        "It is 18 °C and sunny in Paris.",
        finish_reason="stop",
        usage={"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
        timing={"ttft_ms": 120, "answer_ttft_ms": 150, "total_ms": 900},
        model="demo-reasoning",
    )
    return store.get(owner, chat.id)


def test_export_json_round_trips(store):
    original = full_conversation(store, "alice")
    exported = store.export("alice", original.id, "json")
    copy = store.import_json("bob", exported)

    again = json.loads(store.export("bob", copy.id, "json"))
    first = json.loads(exported)
    # Equal but for the ids, which are new and map one to one.
    ids = {
        old["id"]: new["id"]
        for old, new in zip(first["messages"], again["messages"], strict=True)
    }
    ids[first["id"]] = again["id"]
    ids[None] = None

    def renamed(document: dict) -> dict:
        document = dict(document, id=ids[document["id"]])
        document["current_leaf_id"] = ids[document["current_leaf_id"]]
        document["messages"] = [
            dict(m, id=ids[m["id"]], parent_id=ids[m["parent_id"]])
            for m in document["messages"]
        ]
        return document

    assert renamed(first) == again
    assert len(set(ids.values())) == len(ids)
    assert first["messages"][0]["content"][1]["image_url"]["url"] == GIF
    # The copy is bob's alone.
    with pytest.raises(NotFound):
        store.get("alice", copy.id)
    with pytest.raises(InvalidInput, match="format"):
        store.import_json("bob", {"format": "something else"})
    broken = dict(first, messages=[dict(first["messages"][1], parent_id="nope")])
    with pytest.raises(InvalidInput, match=r"messages\[0\]\.parent_id"):
        store.import_json("bob", broken)


def test_export_markdown_reads_as_a_chat(store):
    chat = full_conversation(store, "alice")
    when = chat.created_at.strftime("%Y-%m-%d %H:%M UTC")
    assert store.export("alice", chat.id, "md") == (
        "# Weather in Paris? See the map.\n"
        "\n"
        f"*demo-reasoning · {when}*\n"
        "\n"
        "## User\n"
        "\n"
        "Weather in Paris? See the map.\n"
        "\n"
        "*[image]*\n"
        "\n"
        "## Assistant\n"
        "\n"
        "<details><summary>Reasoning</summary>\n"
        "\n"
        "The user wants the weather.\n"
        "\n"
        "</details>\n"
        "\n"
        "Tool call `weather`:\n"
        "\n"
        "```json\n"
        "{\n"
        '  "city": "Paris"\n'
        "}\n"
        "```\n"
        "\n"
        "## Tool (`call_1`)\n"
        "\n"
        "18 °C, sunny\n"
        "\n"
        "## Assistant\n"
        "\n"
        "It is 18 °C and sunny in Paris.\n"
    )
    with pytest.raises(InvalidInput, match="format"):
        store.export("alice", chat.id, "pdf")


def test_reopening_the_database_keeps_everything(url):
    first = Store.open(url)
    chat = full_conversation(first, "alice")
    first.close()

    reopened = Store.open(url)
    try:
        assert reopened.get("alice", chat.id) == chat
        assert [c.id for c in reopened.list("alice", q="sunny").conversations] == [
            chat.id
        ]
    finally:
        reopened.close()


def test_migrations_create_the_schema_and_rerun_as_a_no_op(url):
    engine = sa.create_engine(normalize_url(url))
    try:
        assert current_revision(engine) is None
        for _ in range(2):
            store = Store.open(url)
            store.close()
            assert current_revision(engine) == "0001"
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE}
            )
            # The tables the migrations made are the ones the store's models name.
            differences = compare_metadata(context, metadata)
        assert [d for d in differences if not _search_objects(d)] == []
        assert sa.inspect(engine).has_table("conversations")
        # A schema from a newer version is refused, and left as it is.
        with engine.begin() as connection:
            connection.execute(
                sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'zz'")
            )
        with pytest.raises(StoreError, match="^database schema zz is unknown here$"):
            Store.open(url)
        assert current_revision(engine) == "zz"
    finally:
        engine.dispose()


def _search_objects(difference) -> bool:
    """The full-text search objects, which are the migration's alone."""
    text = repr(difference)
    return "_fts" in text or "search" in text


def test_an_answer_is_written_once(store):
    chat = store.create_conversation("alice", "demo")
    question = store.add_message("alice", chat.id, None, "user", "Hi")
    reserved = new_id()
    first = store.finish_message(
        "alice", chat.id, reserved, question.id, "Hello!", finish_reason="stop"
    )
    again = store.finish_message(
        "alice", chat.id, reserved, question.id, "Hello! Hello!", finish_reason="stop"
    )
    assert again == first
    assert texts(store.get("alice", chat.id).messages) == ["Hi", "Hello!"]


def test_a_turn_is_written_whole_and_once(store):
    ids = [new_id(), new_id()]
    chat_id = new_id()
    turn = [
        (ids[0], "user", "What is 2+2?", {}),
        (ids[1], "user", "And 3+3?", {}),
    ]
    written = store.add_turn("alice", chat_id, None, turn, new=True, model="demo")
    assert (written.id, written.title, written.model) == (
        chat_id,
        "What is 2+2?",
        "demo",
    )
    assert written.current_leaf_id == ids[1]
    assert store.summary("alice", chat_id) == written
    # A retried turn writes nothing twice; a later one follows the leaf.
    store.add_turn("alice", chat_id, None, turn)
    tool = [(new_id(), "tool", "4", {"tool_call_id": "call_1"})]
    later = store.add_turn("alice", chat_id, ids[1], tool)
    messages = store.get("alice", chat_id).messages
    assert [(m.parent_id, m.content) for m in messages] == [
        (None, "What is 2+2?"),
        (ids[0], "And 3+3?"),
        (ids[1], "4"),
    ]
    assert messages[-1].tool_call_id == "call_1"
    assert later.current_leaf_id == messages[-1].id
    # Another owner's conversation is not found, and nothing is written to it.
    with pytest.raises(NotFound):
        store.add_turn("bob", chat_id, ids[1], [(new_id(), "user", "Hi", {})])
    assert len(store.get("alice", chat_id).messages) == 3


def test_invalid_input_names_the_field(store):
    chat = store.create_conversation("alice", "demo")
    other = store.create_conversation("alice", "demo")
    elsewhere = store.add_message("alice", other.id, None, "user", "Hi")
    cases = [
        ({"parent_id": elsewhere.id}, "parent_id"),
        ({"role": "system"}, "role"),
        ({"content": 42}, "content"),
        ({"content": [{"type": "text"}]}, r"content\[0\]\.text"),
        ({"content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}, "url"),
        (
            {"content": [{"type": "image_url", "image_url": {"url": "data:,<b>"}}]},
            r"content\[0\]\.image_url\.url: a data:image/… URL",
        ),
        ({"usage": "lots"}, "usage"),
        ({"finish_reason": "x" * 40}, "finish_reason"),
    ]
    for change, field in cases:
        call = {"parent_id": None, "role": "user", "content": "Hi", **change}
        with pytest.raises(InvalidInput, match=field):
            store.add_message("alice", chat.id, **call)
    with pytest.raises(InvalidInput, match="owner"):
        store.create_conversation("", "demo")
    assert store.get("alice", chat.id).messages == ()


def test_threads_writing_at_once_lose_nothing(store):
    shared = store.create_conversation("alice", "demo")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            own = store.create_conversation(f"user{n}", "demo")
            for i in range(10):
                store.add_message("alice", shared.id, None, "user", f"{n}-{i}")
                store.add_message(f"user{n}", own.id, None, "user", f"mine {i}")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    kept = store.get("alice", shared.id)
    assert sorted(texts(kept.messages)) == sorted(
        f"{n}-{i}" for n in range(8) for i in range(10)
    )
    for n in range(8):
        (own,) = store.list(f"user{n}").conversations
        assert len(store.get(f"user{n}", own.id).messages) == 10


# Failures


@pytest.fixture
def doomed_postgres(tmp_session) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, to stop."""
    server = PostgresServer(tmp_session)
    yield server
    server.close()


def test_a_stopped_postgresql_raises_store_error_and_recovers(doomed_postgres):
    store = Store.open(doomed_postgres.url, timeout=2)
    try:
        chat = store.create_conversation("alice", "demo")
        doomed_postgres.stop()
        with pytest.raises(StoreError, match="^database unavailable$"):
            store.list("alice")
        with pytest.raises(StoreError, match="^database unavailable$"):
            store.add_message("alice", chat.id, None, "user", "Hello?")
        doomed_postgres.start()
        store.add_message("alice", chat.id, None, "user", "Hello again")
        assert texts(store.get("alice", chat.id).messages) == ["Hello again"]
    finally:
        store.close()


def test_opening_an_unreachable_postgresql_raises_store_error(doomed_postgres):
    doomed_postgres.stop()
    with pytest.raises(StoreError, match="^database unavailable$"):
        Store.open(doomed_postgres.url, timeout=2)


def test_a_postgresql_that_never_answers_raises_store_error():
    # A listening socket that never says a word: the TCP connection is made, the
    # server's greeting never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(StoreError, match="^database unavailable$"):
            Store.open(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=1)


def test_a_lock_held_too_long_raises_store_error(postgres):
    with fresh_database(postgres) as url:
        store = Store.open(url, timeout=1)
        try:
            chat = store.create_conversation("alice", "demo")
            with psycopg.connect(url) as holder:
                holder.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreError, match="^database busy: lock"):
                    store.add_message("alice", chat.id, None, "user", "Hello?")
            store.add_message("alice", chat.id, None, "user", "Hello again")
            assert texts(store.get("alice", chat.id).messages) == ["Hello again"]
        finally:
            store.close()


def test_a_full_sqlite_database_raises_store_error(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/full.db")
    try:
        chat = store.create_conversation("alice", "demo")
        with store.engine.connect() as connection:
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

        # SQLite's own limit on the file's size: the same SQLITE_FULL a full disk
        # gives.
        @sa.event.listens_for(store.engine, "connect")
        def cap(dbapi_connection, record):
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

        store.engine.dispose()
        with pytest.raises(StoreError, match="^database full: no space left$"):
            store.add_message("alice", chat.id, None, "user", "x" * 100_000)
        assert store.get("alice", chat.id).messages == ()
    finally:
        store.close()


def test_a_locked_sqlite_database_raises_store_error(tmp_path):
    path = tmp_path / "locked.db"
    store = Store.open(f"sqlite:///{path}", timeout=0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        chat = store.create_conversation("alice", "demo")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="^database busy"):
            store.add_message("alice", chat.id, None, "user", "Hello?")
        # Readers are not held up by a writer.
        assert store.get("alice", chat.id).messages == ()
        holder.execute("ROLLBACK")
        store.add_message("alice", chat.id, None, "user", "Hello again")
    finally:
        holder.close()
        store.close()


def test_sqlite_folder_created_on_first_use(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/new/folder/history.db")
    store.close()
    assert (tmp_path / "new" / "folder" / "history.db").is_file()
    assert normalize_url("sqlite:///data/chatstream.db").database == str(
        ROOT / "data" / "chatstream.db"
    )
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(InvalidInput, match="DATABASE_URL"):
        normalize_url("sqlite://")


# PostgreSQL under gevent and eventlet: a query waiting for the server lets the other
# greenlets run. The waiting is on a lock this test holds.
COOPERATIVE = """
import sys
mode, url, report = sys.argv[1:]
if mode == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent as hub
else:
    import eventlet as hub
    hub.monkey_patch()
from app.history import Store

store = Store.open(url)
out = open(report, "a", buffering=1)
out.write("open\\n")
state = {"pending": True}

def listing():
    try:
        state["result"] = store.list("alice")
    finally:
        state["pending"] = False

hub.spawn(listing)
ticks = 0
while state["pending"]:
    hub.sleep(0.01)
    ticks += 1
    if ticks == 30 and state["pending"]:
        out.write("other greenlets ran while the query waited\\n")
out.write(f"listed {len(state['result'].conversations)}\\n")
"""


@pytest.mark.parametrize("mode", ["gevent", "eventlet"])
def test_postgresql_waits_let_other_greenlets_run(mode, postgres, tmp_path):
    with fresh_database(postgres) as url:
        store = Store.open(url)
        store.create_conversation("alice", "demo")
        store.close()
        report = tmp_path / "report.txt"
        report.touch()
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
            child = subprocess.Popen(
                [sys.executable, "-c", COOPERATIVE, mode, url, str(report)],
                cwd=ROOT,
                stderr=subprocess.PIPE,
            )
            try:
                wait_until(
                    lambda: "ran while" in report.read_text(),
                    what="other greenlets to run while the query waits",
                )
            finally:
                holder.rollback()
                _, stderr = child.communicate(timeout=30)
        assert child.returncode == 0, stderr.decode()
        assert report.read_text().splitlines() == [
            "open",
            "other greenlets ran while the query waited",
            "listed 1",
        ]


def test_nul_characters_are_kept_as_replacement_characters(store):
    owner = "nul-owner"
    conversation = store.create_conversation(owner, title="a\x00b")
    store.add_message(owner, conversation.id, None, "user", "x\x00y")
    found = store.get(owner, conversation.id)
    assert found.title == "a\ufffdb"
    assert found.messages[0].content == "x\ufffdy"
    assert store.list(owner, q="zz\x00zz").conversations == []
    with pytest.raises(InvalidInput, match="^before:"):
        store.list(owner, before="\x00")
