"""The Python client and the command line with conversations kept on the server:
each turn sends only its new messages and the upstream still gets the whole
history; listing, continuing, the owner (a token, or the anonymous cookie the
command line keeps between runs), and the errors of a conversation that is not
there. Against the relay in front of the test server, and a scripted server in
process for what the client sends."""

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.postgres import PostgresServer
from client import ChatClient, ChatError
from tests.conftest import (
    ROOT,
    SYSTEM_PROMPT,
    Relay,
    Upstream,
    hold_emits,
    relay_env,
)
from tests.openai_server import build_reply, build_tool_calls
from tests.test_client import ScriptedClient, chats_sent, own_relay
from tests.test_client_tools import CALLS, TOOLS, calls_only, final_answer, scripted

TOKENS = ("alice-7f3k", "bob-2m9q")
SYSTEM = {"role": "system", "content": SYSTEM_PROMPT}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def reply(*messages: dict) -> str:
    """What the test server answers a conversation (after the relay's system
    prompt)."""
    return "".join(build_reply([SYSTEM, *messages], 30))


def conversation_env(upstream: Upstream, tmp: Path, name: str, **extra: str) -> dict:
    return relay_env(
        upstream,
        DATABASE_URL=f"sqlite:///{tmp / name}.db",
        OWNER_SECRET=f"owner-secret-of-{name}",
        **extra,
    )


@pytest.fixture(scope="module")
def relay(tmp_session, upstream) -> Iterator[Relay]:
    """The relay keeping conversations in an SQLite file, without tokens: every
    client is anonymous, known by its owner cookie."""
    env = conversation_env(upstream, tmp_session, "client-history-anonymous")
    with own_relay(tmp_session, env) as server:
        yield server


@pytest.fixture(scope="module")
def token_relay(tmp_session, upstream) -> Iterator[Relay]:
    """The same with two static tokens: the token is the owner."""
    env = conversation_env(
        upstream, tmp_session, "client-history-tokens", AUTH_TOKENS=",".join(TOKENS)
    )
    with own_relay(tmp_session, env) as server:
        yield server


# The library, end to end


def test_the_second_turn_sends_only_its_message_and_the_upstream_gets_all(
    relay, upstream
):
    first_prompt = "Tell me about river deltas (history one)"
    second_prompt = "And how do they form? (history one)"
    with ChatClient(relay.url) as chat:
        sent = hold_emits(chat, "chat")
        first = chat.ask(first_prompt)
        conversation_id = chat.conversation_id
        assert conversation_id == sent[0]["ack"]["conversation_id"]
        assert chat.leaf_id == sent[0]["ack"]["answer_id"]
        second = chat.ask(second_prompt)
        assert chat.conversation_id == conversation_id
        result = chat.last_result
        history = chat.history
    # The first request created the conversation with its message; the second
    # named it, followed the first answer, and carried its own message alone.
    assert sent[0]["payload"]["messages"] == [user(first_prompt)]
    assert "conversation_id" not in sent[0]["payload"]
    second_sent = dict(sent[1]["payload"])
    assert second_sent.pop("id")
    assert second_sent == {
        "conversation_id": conversation_id,
        "parent_id": sent[0]["ack"]["answer_id"],
        "messages": [user(second_prompt)],
    }
    assert sent[1]["ack"]["message_ids"] and len(sent[1]["ack"]["message_ids"]) == 1
    # The server built the history from what it stored.
    whole = [user(first_prompt), assistant(first), user(second_prompt)]
    assert upstream.find("form? (history one)")["messages"] == [SYSTEM, *whole]
    assert first == reply(user(first_prompt))
    assert second == reply(*whole)
    assert history == [*whole, assistant(second)]
    assert result["conversation_id"] == conversation_id
    assert result["answer_id"] == sent[1]["ack"]["answer_id"] == chat.leaf_id


def test_conversations_lists_it_with_its_title_and_search_finds_it(relay):
    prompt = "Which birds migrate the farthest? (history list)"
    with ChatClient(relay.url) as chat:
        answer = chat.ask(prompt)
        listed = chat.conversations()
        [conversation] = listed
        assert conversation["id"] == chat.conversation_id
        assert conversation["title"] == prompt
        assert conversation["current_leaf_id"] == chat.leaf_id
        # A word of the answer only (the test server's filler) finds it too.
        word = next(w.strip(".,") for w in answer.split()[::-1] if w not in prompt)
        assert [c["id"] for c in chat.conversations(q=word)] == [chat.conversation_id]
        assert chat.conversations(q="zanzibarquokka") == []
        stored = chat.conversation(chat.conversation_id)
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", prompt),
        ("assistant", answer),
    ]


def test_a_new_client_goes_on_with_a_stored_conversation(relay, upstream):
    prompts = [
        "Name a prime number (history continue)",
        "And one more (history continue, second)",
        "Now the third please (history continue, third)",
    ]
    with ChatClient(relay.url) as chat:
        answers = [chat.ask(prompts[0]), chat.ask(prompts[1])]
        conversation_id, cookie = chat.conversation_id, chat.owner_cookie
        leaf = chat.leaf_id
    assert cookie
    earlier = [user(prompts[0]), assistant(answers[0])]
    earlier += [user(prompts[1]), assistant(answers[1])]
    with ChatClient(
        relay.url, conversation_id=conversation_id, owner_cookie=cookie
    ) as later:
        # The stored branch is the history, as the first client had it.
        assert later.history == earlier
        assert later.leaf_id == leaf
        sent = hold_emits(later, "chat")
        third = later.ask(prompts[2])
        assert later.conversation_id == conversation_id
    assert sent[0]["payload"]["messages"] == [user(prompts[2])]
    assert sent[0]["payload"]["parent_id"] == leaf
    whole = [*earlier, user(prompts[2])]
    assert upstream.find("history continue, third")["messages"] == [SYSTEM, *whole]
    assert third == reply(*whole)


def test_a_failed_turn_leaves_the_history_and_the_next_follows_the_last_answer(
    relay, upstream
):
    with ChatClient(relay.url) as chat:
        first = chat.ask("Start here (history failure)")
        leaf = chat.leaf_id
        with pytest.raises(ChatError) as caught:
            chat.ask("This one breaks (history failure) [[error_after:3]]")
        assert caught.value.code == "upstream_unavailable"
        assert chat.leaf_id == leaf
        sent = hold_emits(chat, "chat")
        again = chat.ask("Try again (history failure, retry)")
        conversation_id, cookie = chat.conversation_id, chat.owner_cookie
    assert sent[0]["payload"]["parent_id"] == leaf
    whole = [user("Start here (history failure)"), assistant(first)]
    whole.append(user("Try again (history failure, retry)"))
    # The failed exchange is a branch of its own: the retry's history lacks it.
    assert upstream.find("history failure, retry")["messages"] == [SYSTEM, *whole]
    assert again == reply(*whole)
    # The server kept both branches; a client that loads the conversation gets
    # the current one.
    later = ChatClient(relay.url, owner_cookie=cookie)
    stored = later.load(conversation_id)
    assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [
        "Start here (history failure)",
        "This one breaks (history failure) [[error_after:3]]",
        "Try again (history failure, retry)",
    ]
    assert later.history == [*whole, assistant(again)]


def test_tool_results_are_the_new_messages_of_a_stored_conversation(relay, upstream):
    weather = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                },
            },
        }
    ]
    prompt = "Weather in two cities (history tools) [[tool_calls:2]]"
    calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in build_tool_calls([SYSTEM, user(prompt)], weather, 2)
    ]
    with ChatClient(relay.url, tools=weather) as chat:
        sent = hold_emits(chat, "chat")
        text = chat.ask(prompt)
        assert chat.pending_tool_calls == calls
        calls_answer = chat.leaf_id
        results = {call["id"]: f"sunny in {n}" for n, call in enumerate(calls)}
        answer = chat.ask(tool_results=results)
        assert chat.pending_tool_calls == []
    tool_turns = [
        {"role": "tool", "tool_call_id": call["id"], "content": results[call["id"]]}
        for call in calls
    ]
    assert sent[1]["payload"]["messages"] == tool_turns
    assert sent[1]["payload"]["parent_id"] == calls_answer
    loop = [
        user(prompt),
        {"role": "assistant", "content": text, "tool_calls": calls},
        *tool_turns,
    ]
    [record] = [
        r
        for r in upstream.requests()
        if r["messages"][1:2] == [user(prompt)] and r["messages"][-1]["role"] == "tool"
    ]
    assert record["messages"] == [SYSTEM, *loop]
    assert answer == reply(*loop)


def test_store_false_sends_the_whole_history_and_keeps_nothing(token_relay, upstream):
    prompts = ["Stateless one (history nostore)", "Stateless two (history nostore)"]
    with ChatClient(token_relay.url, token=TOKENS[0], store=False) as chat:
        sent = hold_emits(chat, "chat")
        first = chat.ask(prompts[0])
        second = chat.ask(prompts[1])
        assert chat.conversation_id is None
        listed = chat.conversations(limit=100)
    for entry in sent:
        assert entry["payload"]["store"] is False
        assert {"conversation_id", "message_ids", "answer_id"}.isdisjoint(entry["ack"])
    whole = [user(prompts[0]), assistant(first), user(prompts[1])]
    assert sent[1]["payload"]["messages"] == whole
    assert second == reply(*whole)
    assert not [c for c in listed if "nostore" in (c["title"] or "")]


def test_two_tokens_never_see_each_others_conversations(token_relay):
    owned = {}
    for token in TOKENS:
        with ChatClient(token_relay.url, token=token) as chat:
            chat.ask(f"A secret of {token} (history owners)")
            owned[token] = chat.conversation_id
            assert chat.owner_cookie is None  # the token is the owner
    for token, other in (TOKENS, TOKENS[::-1]):
        chat = ChatClient(token_relay.url, token=token)
        listed = [c["id"] for c in chat.conversations(limit=100)]
        assert owned[token] in listed
        assert owned[other] not in listed
        assert chat.conversations(q=other) == []
        # Another's conversation is not there, as one that never was.
        for missing in (owned[other], "no-such-conversation"):
            with pytest.raises(ChatError) as caught:
                chat.conversation(missing)
            assert caught.value.code == "not_found"
            with pytest.raises(ChatError) as caught:
                ChatClient(
                    token_relay.url, token=token, conversation_id=missing
                ).connect()
            assert caught.value.code == "not_found"


def test_an_unknown_conversation_is_not_found_before_connecting(relay):
    chat = ChatClient(relay.url, conversation_id="no-such-conversation")
    with pytest.raises(ChatError) as caught:
        chat.connect()
    assert caught.value.code == "not_found"
    assert caught.value.retryable is False
    assert not chat.connected
    assert chat.history == []


def test_an_anonymous_client_without_the_cookie_is_a_new_owner(relay):
    with ChatClient(relay.url) as chat:
        chat.ask("Only mine (history anonymous)")
        mine = chat.conversation_id
        assert [c["id"] for c in chat.conversations()] == [mine]
    stranger = ChatClient(relay.url)
    assert stranger.conversations() == []
    with pytest.raises(ChatError) as caught:
        stranger.load(mine)
    assert caught.value.code == "not_found"


def test_a_cookie_the_server_cannot_read_is_replaced_by_a_new_owner(relay):
    # Signed with another secret (a server whose OWNER_SECRET changed).
    stale = "InN0YWxlIg.Zm9yZ2VkLXNpZ25hdHVyZQ"
    with ChatClient(relay.url, owner_cookie=stale) as chat:
        assert chat.owner_cookie not in (None, stale)
        chat.ask("A fresh owner (history stale cookie)")
        assert [c["title"] for c in chat.conversations()] == [
            "A fresh owner (history stale cookie)"
        ]


# The command line


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """The environment of a command-line user of their own: a config folder of
    their own (where the owner cookie is kept), times in UTC."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHAT_URL", "CHAT_TOKEN")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "config"), "TZ": "UTC"}


def cli(env: dict[str, str], *args: str, stdin: str = ""):
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def listed(env: dict[str, str], url: str, *args: str) -> list[dict]:
    result = cli(env, "--url", url, "--list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_cli_list_then_continue_goes_on_with_the_same_conversation(
    relay, upstream, cli_env
):
    url = relay.url
    prompts = [
        "Why do cats purr? (history cli)",
        "And dogs? (history cli, second)",
        "And birds? (history cli, third)",
        "And fish? (history cli, fourth)",
    ]
    result = cli(cli_env, "--url", url, prompts[0])
    assert result.returncode == 0, result.stderr
    first = reply(user(prompts[0]))
    assert result.stdout == first + "\n"
    # The owner cookie is kept for the next run, readable by the user only.
    kept = (
        Path(cli_env["XDG_CONFIG_HOME"])
        / "chatstream"
        / f"owner-127.0.0.1:{relay.port}"
    )
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    [conversation] = listed(cli_env, url)
    assert conversation["title"] == prompts[0]
    result = cli(cli_env, "--url", url, "--list")
    assert result.returncode == 0, result.stderr
    updated = datetime.fromisoformat(conversation["updated_at"]).astimezone(UTC)
    assert result.stdout == (
        f"{conversation['id']}  {updated:%Y-%m-%d %H:%M}  {prompts[0]}\n"
    )

    # --continue ID, one shot.
    result = cli(cli_env, "--url", url, "--continue", conversation["id"], prompts[1])
    assert result.returncode == 0, result.stderr
    whole = [user(prompts[0]), assistant(first), user(prompts[1])]
    assert upstream.find("history cli, second")["messages"] == [SYSTEM, *whole]
    assert result.stdout == reply(*whole) + "\n"
    whole.append(assistant(reply(*whole)))

    # --continue without an ID: the most recently updated, the prompt before it.
    result = cli(cli_env, "--url", url, prompts[2], "--continue")
    assert result.returncode == 0, result.stderr
    whole.append(user(prompts[2]))
    assert upstream.find("history cli, third")["messages"] == [SYSTEM, *whole]
    assert result.stdout == reply(*whole) + "\n"
    whole.append(assistant(reply(*whole)))

    # Interactive, the prompt read from stdin.
    result = cli(cli_env, "--url", url, "-i", "--continue", stdin=prompts[3] + "\n")
    assert result.returncode == 0, result.stderr
    whole.append(user(prompts[3]))
    assert upstream.find("history cli, fourth")["messages"] == [SYSTEM, *whole]
    assert result.stdout == reply(*whole) + "\n"
    assert result.stderr == f"[continuing {conversation['id']}: {prompts[0]}]\n"

    # Still the one conversation.
    assert [c["id"] for c in listed(cli_env, url)] == [conversation["id"]]


def test_cli_continue_with_nothing_stored_or_an_unknown_id_fails_clearly(
    relay, cli_env
):
    result = cli(cli_env, "--url", relay.url, "--continue", "--", "hello")
    assert result.returncode == 1
    assert result.stderr == "error: not_found: --continue: no stored conversation yet\n"
    assert result.stdout == ""
    result = cli(cli_env, "--url", relay.url, "--continue", "nosuchid", "hello")
    assert result.returncode == 1
    assert result.stderr.startswith("error: not_found: --continue nosuchid: ")
    assert "a prompt goes before --continue" not in result.stderr
    assert result.stdout == ""
    # A prompt taken for the ID: the error says how to give both.
    result = cli(cli_env, "--url", relay.url, "--continue", "hello", stdin="more")
    assert result.returncode == 1
    assert result.stderr.startswith("error: not_found: --continue hello: ")
    assert result.stderr.endswith(" (a prompt goes before --continue, or after --)\n")


def test_cli_no_store_keeps_nothing(relay, cli_env):
    prompt = "Forget me (history cli nostore)"
    result = cli(cli_env, "--url", relay.url, "--no-store", prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reply(user(prompt)) + "\n"
    # No cookie was needed, so none was kept; the owner it would be has nothing.
    assert not (Path(cli_env["XDG_CONFIG_HOME"]) / "chatstream").exists()
    assert listed(cli_env, relay.url) == []
    result = cli(cli_env, "--url", relay.url, "--no-store", "--continue")
    assert result.returncode == 2
    assert "--continue: not with --no-store" in result.stderr


def test_cli_users_with_their_own_cookie_or_token_see_their_own(
    relay, token_relay, cli_env, tmp_path
):
    result = cli(cli_env, "--url", relay.url, "Mine alone (history cli owner)")
    assert result.returncode == 0, result.stderr
    other = {**cli_env, "XDG_CONFIG_HOME": str(tmp_path / "someone-else")}
    assert [c["title"] for c in listed(cli_env, relay.url)] == [
        "Mine alone (history cli owner)"
    ]
    assert listed(other, relay.url) == []

    for token in TOKENS:
        result = cli(
            cli_env, "--url", token_relay.url, "--token", token, f"From {token} cli"
        )
        assert result.returncode == 0, result.stderr
    for token, other_token in (TOKENS, TOKENS[::-1]):
        titles = [
            c["title"]
            for c in listed(
                cli_env, token_relay.url, "--token", token, "--limit", "100"
            )
        ]
        assert f"From {token} cli" in titles
        assert f"From {other_token} cli" not in titles
    # With a token no cookie is kept.
    config = Path(cli_env["XDG_CONFIG_HOME"]) / "chatstream"
    assert sorted(p.name for p in config.iterdir()) == [f"owner-127.0.0.1:{relay.port}"]


# What the client sends and keeps, against a scripted server


class Keeping(ScriptedClient):
    """A scripted server that keeps conversations: each ack names the conversation
    (the one the chat named, else a new one) and the answer's id."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answers = 0

    def _emit(self, event, data, callback) -> None:
        if event == "chat" and self.refusal is None:
            self.answers += 1
            ids = {
                "conversation_id": data.get("conversation_id") or "conv-1",
                "message_ids": [f"m{self.answers}"],
                "answer_id": f"a{self.answers}",
            }

            def acked(ack: dict) -> None:
                callback({**ack, **ids} if ack.get("ok") else ack)

            return super()._emit(event, data, acked)
        return super()._emit(event, data, callback)


def test_a_stored_conversation_sends_the_system_message_and_the_new_turn():
    chat = Keeping(system="Be brief.")
    chat.ask("Why blue?")
    chat.ask("And at sunset?")
    first, second = chats_sent(chat)
    system = {"role": "system", "content": "Be brief."}
    assert first["messages"] == [system, user("Why blue?")]
    # The server keeps no system message: it leads every request.
    assert second["messages"] == [system, user("And at sunset?")]
    assert (second["conversation_id"], second["parent_id"]) == ("conv-1", "a1")
    assert chat.history == [
        user("Why blue?"),
        assistant("Rayleigh scattering."),
        user("And at sunset?"),
        assistant("Rayleigh scattering."),
    ]


def test_a_failed_first_exchange_leaves_no_conversation_to_follow():
    def failing(request_id: str) -> list[tuple[str, dict]]:
        failure = {"code": "upstream_unavailable", "message": "down", "retryable": True}
        return [("error", failure)]

    chat = Keeping()
    chat.script = failing
    with pytest.raises(ChatError):
        chat.ask("Hello?")
    # The server created a conversation (the ack named it) holding only the
    # failed question: the next request starts afresh with the whole history.
    assert chat.conversation_id is None
    chat.script = ScriptedClient.script
    chat.ask("Hello again")
    assert chat.conversation_id == "conv-1"
    assert "conversation_id" not in chats_sent(chat)[1]


def test_reset_starts_a_new_conversation():
    chat = Keeping()
    chat.ask("One")
    chat.reset()
    assert (chat.conversation_id, chat.leaf_id, chat.history) == (None, None, [])
    chat.ask("Two")
    assert chats_sent(chat)[1]["messages"] == [user("Two")]
    assert "conversation_id" not in chats_sent(chat)[1]


def test_a_server_that_keeps_nothing_gets_the_whole_history():
    # ScriptedClient's acks name no conversation, as a server without a store.
    chat = ScriptedClient()
    chat.ask("One")
    chat.ask("Two")
    assert chat.conversation_id is None
    assert chats_sent(chat)[1]["messages"] == [
        user("One"),
        assistant("Rayleigh scattering."),
        user("Two"),
    ]


def test_history_unavailable_at_the_end_raises_and_keeps_the_last_answer_as_leaf():
    def unsaved(request_id: str) -> list[tuple[str, dict]]:
        return [
            ("chunk", {"seq": 0, "delta": "Sent "}),
            ("chunk", {"seq": 1, "delta": "but not kept."}),
            (
                "error",
                {
                    "code": "history_unavailable",
                    "message": "the answer was sent but could not be saved",
                    "retryable": True,
                },
            ),
        ]

    chat = Keeping()
    chat.ask("Kept")
    chat.script = unsaved
    with pytest.raises(ChatError) as caught:
        chat.ask("Not kept")
    assert caught.value.code == "history_unavailable"
    assert caught.value.retryable is True
    assert chat.history == [user("Kept"), assistant("Rayleigh scattering.")]
    assert chat.leaf_id == "a1"


def test_tool_results_of_a_stored_conversation_go_alone_after_the_calls():
    chat = scripted(calls_only, final_answer, tools=TOOLS)
    ids = iter(["a1", "a2"])
    original = chat._emit

    def keeping(event, data, callback):
        if event != "chat":
            return original(event, data, callback)
        answer_id = next(ids)
        return original(
            event,
            data,
            lambda ack: callback(
                {**ack, "conversation_id": "conv-9", "answer_id": answer_id}
            ),
        )

    chat._emit = keeping
    chat.ask("Weather in Paris and Rome?")
    assert chat.pending_tool_calls == CALLS
    chat.ask(tool_results={"call_1": "18 C", "call_2": "21 C"})
    second = chats_sent(chat)[1]
    assert second["conversation_id"] == "conv-9"
    assert second["parent_id"] == "a1"
    assert second["messages"] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21 C"},
    ]
    assert chat.leaf_id == "a2"


def test_conversation_id_and_store_false_do_not_go_together():
    with pytest.raises(ValueError, match="conversation_id: not with store=False"):
        ChatClient(conversation_id="abc", store=False)


# A store that fails


def test_a_failing_store_is_history_unavailable_and_the_client_goes_on_after(
    tmp_session, upstream, cli_env
):
    database = PostgresServer(tmp_session)
    env = relay_env(upstream, DATABASE_URL=database.url, OWNER_SECRET="pg-client")
    try:
        with own_relay(tmp_session, env) as relay, ChatClient(relay.url) as chat:
            first = chat.ask("Before the outage (history outage)")
            leaf = chat.leaf_id
            database.stop()
            # At the start of a chat: nothing went upstream.
            with pytest.raises(ChatError) as caught:
                chat.ask("During the outage (history outage, down)")
            assert (caught.value.code, caught.value.retryable) == (
                "history_unavailable",
                True,
            )
            assert not [
                r for r in upstream.requests() if "history outage, down" in r["prompt"]
            ]
            with pytest.raises(ChatError) as caught:
                chat.conversations()
            assert (caught.value.code, caught.value.retryable) == (
                "history_unavailable",
                True,
            )
            result = cli({**cli_env}, "--url", relay.url, "--list")
            assert result.returncode == 1
            assert result.stderr.startswith("error: history_unavailable: ")
            assert chat.history == [
                user("Before the outage (history outage)"),
                assistant(first),
            ]
            assert chat.leaf_id == leaf
            database.start()
            # Back: the same conversation goes on after its last answer.
            again = chat.ask("After the outage (history outage, back)")
            whole = [*chat.history[:2], user("After the outage (history outage, back)")]
            assert upstream.find("history outage, back")["messages"] == [SYSTEM, *whole]
            assert again == reply(*whole)
    finally:
        database.close()


def test_cli_replaces_a_kept_cookie_the_server_cannot_read(relay, cli_env):
    kept = (
        Path(cli_env["XDG_CONFIG_HOME"])
        / "chatstream"
        / f"owner-127.0.0.1:{relay.port}"
    )
    kept.parent.mkdir(parents=True)
    kept.write_text("InN0YWxlIg.Zm9yZ2VkLXNpZ25hdHVyZQ\n")
    prompt = "Under a new cookie (history cli stale)"
    result = cli(cli_env, "--url", relay.url, prompt)
    assert result.returncode == 0, result.stderr
    assert kept.read_text() != "InN0YWxlIg.Zm9yZ2VkLXNpZ25hdHVyZQ\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert [c["title"] for c in listed(cli_env, relay.url)] == [prompt]
