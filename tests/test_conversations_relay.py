"""Conversations kept on the server, through Socket.IO: a chat names its conversation
and sends only its new message; the model still gets the whole branch; the store
keeps every answer, branches included, and one owner never reaches another's."""

import uuid
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer

from app.history import Store

from .conftest import (
    SYSTEM_PROMPT,
    PostgresServer,
    Recorder,
    Relay,
    relay_env,
    upstream_text,
)


def owner_cookie(relay: Relay, owner_id: str) -> dict[str, str]:
    """The Cookie header of an anonymous browser whose owner id is ``owner_id``,
    signed with the server's own secret."""
    secret = relay.process.log_path.with_suffix(".secret").read_text().strip()
    value = URLSafeSerializer(secret, salt="chatstream.owner").dumps(owner_id)
    return {"Cookie": f"chatstream_owner={value}"}


def store_of(relay: Relay) -> Store:
    """The relay's own SQLite database, opened beside it."""
    return Store.open(f"sqlite:///{Path(relay.process.log_path).with_suffix('.db')}")


def fresh() -> str:
    return uuid.uuid4().hex[:10]


def sent_messages(upstream, marker: str) -> list[list[dict]]:
    """The messages of every upstream request whose last message holds ``marker``."""
    return [
        r["body"]["messages"]
        for r in upstream.requests()
        if marker in (r["prompt"] or "")
    ]


def ended(client: Recorder, request_id: str) -> dict:
    name, payload = client.wait_end(request_id)
    assert name == "done", payload
    return payload


@pytest.fixture
def alice(relay, connect) -> Recorder:
    """An anonymous browser's connection; ``owner`` is how the store names it."""
    owner_id = "alice-" + fresh()
    client = connect(headers=owner_cookie(relay, owner_id))
    client.owner = "anon:" + owner_id
    client.cookie = owner_cookie(relay, owner_id)
    return client


def test_second_turn_sends_only_the_new_message_and_the_model_gets_it_all(
    relay, upstream, alice
):
    first, second = f"first {fresh()}", f"second {fresh()}"
    ack = alice.chat("t1", first)
    assert ack["ok"] and ack["conversation_id"] and len(ack["message_ids"]) == 1
    done = ended(alice, "t1")
    assert (done["conversation_id"], done["answer_id"]) == (
        ack["conversation_id"],
        ack["answer_id"],
    )
    answer = alice.text("t1")
    assert answer == upstream_text(first)

    ack2 = alice.chat("t2", second, conversation_id=ack["conversation_id"])
    assert ack2["ok"] and ack2["conversation_id"] == ack["conversation_id"]
    ended(alice, "t2")
    assert sent_messages(upstream, second) == [
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": first},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": second},
        ]
    ]
    stored = store_of(relay).branch(alice.owner, ack["conversation_id"])
    assert [(m.id, m.role, m.content) for m in stored] == [
        (ack["message_ids"][0], "user", first),
        (ack["answer_id"], "assistant", answer),
        (ack2["message_ids"][0], "user", second),
        (ack2["answer_id"], "assistant", alice.text("t2")),
    ]
    assert stored[1].finish_reason == "stop"
    assert stored[1].usage["completion_tokens"] == 30


def test_regenerating_keeps_the_first_answer_beside_the_new_one(relay, upstream, alice):
    prompt = f"regenerate me {fresh()}"
    ack = alice.chat("r1", prompt)
    ended(alice, "r1")
    user_id = ack["message_ids"][0]
    again = alice.call(
        "chat",
        {
            "id": "r2",
            "conversation_id": ack["conversation_id"],
            "parent_id": user_id,
            "options": {"seed": 7},
        },
    )
    assert again["ok"] and again["message_ids"] == []
    ended(alice, "r2")
    # Both requests carried the same history: the system prompt and the question.
    assert [m[1:] for m in sent_messages(upstream, prompt)] == [
        [{"role": "user", "content": prompt}]
    ] * 2
    conversation = store_of(relay).get(alice.owner, ack["conversation_id"])
    answers = [m for m in conversation.messages if m.role == "assistant"]
    assert [(m.id, m.parent_id) for m in answers] == [
        (ack["answer_id"], user_id),
        (again["answer_id"], user_id),
    ]
    assert conversation.current_leaf_id == again["answer_id"]


def test_editing_the_first_message_starts_a_new_root(relay, upstream, alice):
    before, after = f"original {fresh()}", f"edited {fresh()}"
    ack = alice.chat("e1", before)
    ended(alice, "e1")
    edit = alice.call(
        "chat",
        {
            "id": "e2",
            "message": after,
            "conversation_id": ack["conversation_id"],
            "parent_id": None,
        },
    )
    assert edit["ok"]
    ended(alice, "e2")
    assert [m[1:] for m in sent_messages(upstream, after)] == [
        [{"role": "user", "content": after}]
    ]
    conversation = store_of(relay).get(alice.owner, ack["conversation_id"])
    roots = [m.content for m in conversation.messages if m.parent_id is None]
    assert roots == [before, after]
    assert len(conversation.messages) == 4


def test_a_stopped_answer_is_kept_with_the_text_it_had(relay, alice):
    ack = alice.chat("s1", f"[[tokens:400]] [[tps:40]] stop me {fresh()}")
    alice.wait(lambda c: len(c.chunks("s1")) >= 3)
    assert alice.call("stop", {"id": "s1"})["ok"]
    done = ended(alice, "s1")
    assert done["finish_reason"] == "cancelled"
    stored = store_of(relay).branch(alice.owner, ack["conversation_id"])
    assert stored[-1].id == ack["answer_id"]
    assert stored[-1].content == alice.text("s1")
    assert stored[-1].finish_reason == "cancelled"


def test_store_false_keeps_nothing(relay, alice):
    ack = alice.chat("n1", f"stateless {fresh()}", store=False)
    assert ack["ok"]
    assert "conversation_id" not in ack and "answer_id" not in ack
    done = ended(alice, "n1")
    assert "conversation_id" not in done
    assert store_of(relay).list(alice.owner).conversations == []
    refused = alice.call(
        "chat",
        {"id": "n2", "message": "hi", "store": False, "conversation_id": "x" * 22},
    )
    assert refused["error"]["code"] == "invalid_request"
    assert refused["error"]["message"].startswith("conversation_id:")


def test_another_owner_cannot_continue_or_regenerate(relay, upstream, connect, alice):
    ack = alice.chat("o1", f"private {fresh()}")
    ended(alice, "o1")
    mallory = connect(headers=owner_cookie(relay, "mallory-" + fresh()))
    marker = f"intrusion {fresh()}"
    for payload in (
        {"message": marker, "conversation_id": ack["conversation_id"]},
        {
            "conversation_id": ack["conversation_id"],
            "parent_id": ack["message_ids"][0],
        },
    ):
        refused = mallory.call("chat", {"id": "m1", **payload})
        assert refused["ok"] is False
        assert refused["error"]["code"] == "not_found"
    assert sent_messages(upstream, marker) == []
    assert mallory.notices == []
    assert (
        store_of(relay).list(alice.owner).conversations[0].id
        == (ack["conversation_id"])
    )


def test_without_an_owner_nothing_is_kept(relay, connect):
    anonymous = connect()
    ack = anonymous.chat("a1", f"no cookie {fresh()}")
    assert ack["ok"] and "conversation_id" not in ack
    ended(anonymous, "a1")
    refused = anonymous.chat("a2", "hi", conversation_id="x" * 22)
    assert refused["error"]["code"] == "not_found"


def test_a_new_conversation_appears_on_the_owners_other_tabs_only(
    relay, connect, alice
):
    other_tab = connect(headers=alice.cookie)
    stranger = connect(headers=owner_cookie(relay, "stranger-" + fresh()))
    prompt = f"Tell me about lighthouses {fresh()}"
    ack = alice.chat("n1", prompt)
    ended(alice, "n1")
    other_tab.wait(lambda c: c.notices)
    name, summary = other_tab.notices[0]
    assert name == "conversation"
    assert summary["id"] == ack["conversation_id"]
    assert summary["title"] == prompt
    assert other_tab.events == []
    # The announcement went to the owner's connections, the asking one included;
    # the stranger, connected all along, got nothing.
    alice.wait(lambda c: c.notices)
    stranger.chat("ping", f"ping {fresh()}")
    stranger.wait_end("ping")
    assert all(
        summary["id"] != ack["conversation_id"] for _, summary in stranger.notices
    )


@pytest.fixture
def postgres_relay(tmp_session, async_mode, upstream):
    """A relay keeping conversations in a PostgreSQL server the test may stop."""
    database = PostgresServer(tmp_session)
    relay = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, DATABASE_URL=database.url, OWNER_SECRET="pg-secret"),
    )
    yield relay, database
    relay.process.stop()
    database.close()


def test_a_store_that_fails_ends_the_chat_with_a_coded_error(postgres_relay, upstream):
    relay, database = postgres_relay
    value = URLSafeSerializer("pg-secret", salt="chatstream.owner").dumps("pg")
    client = Recorder(relay.url, headers={"Cookie": f"chatstream_owner={value}"})
    try:
        prompt = f"[[tokens:40]] [[tps:20]] outage {fresh()}"
        ack = client.chat("p1", prompt)
        assert ack["ok"]
        client.wait(lambda c: len(c.chunks("p1")) >= 2)
        database.stop()
        # The answer still reaches the client whole; that it was not kept shows.
        name, error = client.wait_end("p1", timeout=60)
        assert client.text("p1") == upstream_text(prompt, tokens=40)
        assert (name, error["code"], error["retryable"]) == (
            "error",
            "history_unavailable",
            True,
        )
        # Going on with it needs its history: refused before anything goes upstream.
        marker = f"while down {fresh()}"
        going_on = {"conversation_id": ack["conversation_id"]}
        refused = client.chat("p2", marker, **going_on)
        assert (refused["ok"], refused["error"]["code"]) == (
            False,
            "history_unavailable",
        )
        assert client.chunks("p2") == []
        assert sent_messages(upstream, marker) == []
        # A new chat needs none: it is answered all the same (the store is written
        # beside the generation, never before it), and says it was not kept.
        fresh_chat = f"new while down {fresh()}"
        assert client.chat("p3", fresh_chat)["ok"]
        name, error = client.wait_end("p3", timeout=60)
        assert (name, error["code"]) == ("error", "history_unavailable")
        assert client.text("p3") == upstream_text(fresh_chat)
    finally:
        client.close()
