"""Moderation: a flagged message never goes upstream; a flagged window of the answer
never reaches a client in hold mode, and in stream mode is taken back from the
client, from the resume buffer and from Redis, so that no resume on any node
replays it; the upstream stream closes right after it; other streams go on
untouched. The keyword moderator, OpenAI's endpoint (the test server's), and a
Python callable."""

import base64
import itertools
import json
import urllib.request
from typing import Any

import openai
import pytest
import requests

from app.cluster import ClusterStreamStore
from app.moderation import ConfigError, make_moderation
from app.moderation.moderators import KeywordModerator
from client import ChatClient
from client.answer import Answer

from .clients import metric, sse_events
from .conftest import (
    DEFAULT_ASYNC_MODE,
    UPSTREAM_KEY,
    Recorder,
    Relay,
    Upstream,
    relay_env,
    upstream_text,
)
from .openai_server.replies import FILLER
from .test_cluster import RedisServer, wait_mirrored_end

KEYWORD = "zorblax"
WINDOW = 60
OVERLAP = 20
KEYWORDS = {
    "MODERATION": "keywords",
    "MODERATION_KEYWORDS": f"{KEYWORD}, forbidden phrase",
    "MODERATION_WINDOW_CHARS": str(WINDOW),
    "MODERATION_OVERLAP_CHARS": str(OVERLAP),
}


def reply(words: int, tag: str, keyword_at: int | None = None) -> str:
    """An answer of ``words`` words (``tag`` first), ``KEYWORD`` at ``keyword_at``."""
    chosen = [tag] + [FILLER[n % len(FILLER)] for n in range(1, words)]
    if keyword_at is not None:
        chosen[keyword_at] = KEYWORD
    return " ".join(chosen) + "."


def prompt_for(marker: str, text: str, tps: int = 50) -> str:
    """A prompt the test server answers with exactly ``text``, a word a chunk."""
    encoded = base64.b64encode(text.encode()).decode()
    return f"{marker} [[reply:{encoded}]] [[tps:{tps}]]"


def kept_text(client: Recorder, request_id: str) -> str:
    """The text the client holds once it applied every ``retract`` it got."""
    retracts = [d["from_seq"] for n, d in client.of(request_id) if n == "retract"]
    cut = min(retracts, default=None)
    return "".join(
        c["delta"] for c in client.chunks(request_id) if cut is None or c["seq"] < cut
    )


def wait_retracted(client: Recorder, request_id: str) -> tuple[dict, dict]:
    """Wait for the request's ``retract`` and ``done``; return both."""
    name, done = client.wait_end(request_id)
    assert name == "done", done
    client.wait(lambda c: any(n == "retract" for n, _ in c.of(request_id)))
    (retract,) = [d for n, d in client.of(request_id) if n == "retract"]
    return retract, done


def moderation_calls(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    """The test server's records of moderation requests from the first with
    ``marker`` in an input on (one test's, as the tests run one at a time)."""
    with urllib.request.urlopen(upstream.url + "/_moderations", timeout=5) as got:
        records = json.load(got)
    for index, record in enumerate(records):
        if any(marker in text for text in record["input"] or ()):
            return records[index:]
    return []


def upstream_records(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests() if marker in (r["prompt"] or "")]


# -- the servers -----------------------------------------------------------------------


@pytest.fixture
def clients():
    """Opens recording clients to any relay, and closes them after the test."""
    opened: list[Recorder] = []

    def open_client(url: str, **options: Any) -> Recorder:
        client = Recorder(url, **options)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def holding(async_mode, tmp_session, upstream):
    """A relay moderating with keywords in hold mode."""
    server = Relay(tmp_session, async_mode, relay_env(upstream, **KEYWORDS))
    yield server
    server.quit()


@pytest.fixture(scope="module")
def redis_store(async_mode, tmp_session):
    """A Redis server for the stream-mode nodes of each async mode."""
    server = RedisServer(tmp_session)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def streaming(async_mode, tmp_session, upstream, redis_store):
    """Two relay nodes sharing Redis, moderating with keywords in stream mode."""
    nodes = [
        Relay(
            tmp_session,
            async_mode,
            relay_env(
                upstream,
                **KEYWORDS,
                MODERATION_MODE="stream",
                SOCKETIO_MESSAGE_QUEUE=redis_store.url,
                NODE_ID=f"moderated-{name}",
                RESUME_GRACE_SECONDS="10",
            ),
        )
        for name in "ab"
    ]
    yield nodes
    for node in nodes:
        node.quit()


@pytest.fixture(scope="module")
def remote(async_mode, tmp_session, upstream):
    """A relay moderating with the test server's /v1/moderations, blocking on a
    failure, giving a check half a second."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            MODERATION="openai",
            MODERATION_WINDOW_CHARS=str(WINDOW),
            MODERATION_OVERLAP_CHARS=str(OVERLAP),
            MODERATION_TIMEOUT="0.5",
        ),
    )
    yield server
    server.quit()


# -- hold mode -------------------------------------------------------------------------


def test_hold_mode_never_sends_a_flagged_window_and_closes_the_upstream(
    holding, clients, upstream
):
    marker = f"hold-{holding.async_mode}"
    # 15 s of answer at 40 words a second, the keyword in the 31st word.
    text = reply(600, marker, keyword_at=30)
    client = clients(holding.url)
    ack = client.chat("h", prompt_for(marker, text, tps=40))
    name, done = client.wait_end("h")
    assert name == "done"
    assert done["finish_reason"] == "content_filter"
    received = client.text("h")
    assert KEYWORD not in received
    assert text.startswith(received)
    # What went out had passed: at most the text before the keyword's word.
    assert len(received) <= text.index(KEYWORD)
    assert done["chunks"] == len(client.chunks("h"))
    assert not [n for n, _ in client.of("h") if n == "retract"]
    # The upstream stream was closed right after the window that held the keyword.
    record = upstream.wait_outcome(marker)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 100
    # A resume from the start replays what went out, and nothing else.
    other = clients(holding.url)
    ack = other.call("resume", {"id": "h", "token": ack["resume_token"], "after": -1})
    assert ack["ok"] is True
    assert other.wait_end("h")[1]["finish_reason"] == "content_filter"
    assert other.text("h") == received


def test_hold_mode_passes_a_clean_answer_whole(holding, clients):
    marker = f"clean-{holding.async_mode}"
    text = reply(80, marker)
    client = clients(holding.url)
    assert client.chat("c", prompt_for(marker, text, tps=200))["ok"]
    name, done = client.wait_end("c")
    assert (name, done["finish_reason"]) == ("done", "stop")
    assert client.text("c") == text
    # Nothing is held once it has ended.
    assert metric(holding, "chat_moderation_held_chars") == 0
    final = 'point="final",result="allowed"'
    assert metric(holding, "chat_moderation_checks_total", final) >= 1


def test_http_clients_are_always_held_even_in_stream_mode(streaming):
    node = streaming[0]
    marker = f"http-held-{node.async_mode}"
    text = reply(60, marker, keyword_at=35)
    body = {
        "messages": [{"role": "user", "content": prompt_for(marker, text)}],
        "stream": True,
    }
    response = requests.post(
        node.url + "/v1/chat/completions", json=body, stream=True, timeout=30
    )
    assert response.status_code == 200
    events = list(sse_events(response))
    deltas = [
        e["data"]["choices"][0]["delta"].get("content", "")
        for e in events
        if e["data"] != "[DONE]" and e["data"]["choices"]
    ]
    received = "".join(deltas)
    assert KEYWORD not in received
    assert text.startswith(received)
    finishes = [
        e["data"]["choices"][0]["finish_reason"]
        for e in events
        if e["data"] != "[DONE]" and e["data"]["choices"]
    ]
    assert finishes[-1] == "content_filter"
    assert events[-1]["data"] == "[DONE]"


# -- stream mode -----------------------------------------------------------------------


def test_stream_mode_sends_at_once_then_takes_the_flagged_window_back(
    streaming, clients, upstream
):
    node = streaming[0]
    marker = f"retract-{node.async_mode}"
    text = reply(600, marker, keyword_at=30)
    client = clients(node.url)
    assert client.chat("s", prompt_for(marker, text, tps=40))["ok"]
    retract, done = wait_retracted(client, "s")
    # The keyword went out at once, before its window was checked…
    assert KEYWORD in client.text("s")
    # …and was taken back: the client keeps the chunks before from_seq, which
    # hold no flagged text, and the done counts only those.
    assert done["finish_reason"] == "content_filter"
    assert retract == {"id": "s", "from_seq": done["chunks"]}
    kept = kept_text(client, "s")
    assert KEYWORD not in kept
    assert text.startswith(kept)
    record = upstream.wait_outcome(marker)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 100


def start_and_cut(url: str, request_id: str, prompt: str) -> tuple[str, list]:
    """Start a stream, cut the transport once the keyword has arrived; return the
    token and the chunks held."""
    client = Recorder(url, transports=["websocket"])
    token = client.chat(request_id, prompt)["resume_token"]
    client.wait(lambda c: KEYWORD in c.text(request_id))
    client.cut()
    client.wait(
        lambda c: (
            [ch["seq"] for ch in c.chunks(request_id)]
            == list(range(len(c.chunks(request_id))))
        )
    )
    return token, client.chunks(request_id)


def test_resume_on_the_same_node_never_replays_taken_back_text(streaming, clients):
    node = streaming[0]
    marker = f"resume-here-{node.async_mode}"
    text = reply(600, marker, keyword_at=30)
    token, held = start_and_cut(node.url, "rh", prompt_for(marker, text, tps=40))
    assert KEYWORD in "".join(c["delta"] for c in held)
    node.wait_log("request rh finished: content_filter")
    # After the last chunk it held, beyond the end kept: the retraction and the end.
    late = clients(node.url)
    ack = late.call("resume", {"id": "rh", "token": token, "after": held[-1]["seq"]})
    assert ack == {"ok": True, "id": "rh", "replayed": 0}
    retract, done = wait_retracted(late, "rh")
    assert late.chunks("rh") == []
    assert retract["from_seq"] == done["chunks"] <= held[-1]["seq"]
    # From the start: the chunks kept, none flagged, then the retraction and end.
    fresh = clients(node.url)
    assert fresh.call("resume", {"id": "rh", "token": token, "after": -1})["ok"]
    wait_retracted(fresh, "rh")
    assert [c["seq"] for c in fresh.chunks("rh")] == list(range(done["chunks"]))
    assert KEYWORD not in fresh.text("rh")
    assert text.startswith(fresh.text("rh"))


def test_resume_on_another_node_never_replays_taken_back_text(
    streaming, redis_store, clients
):
    a, b = streaming
    marker = f"resume-there-{a.async_mode}"
    text = reply(600, marker, keyword_at=30)
    token, held = start_and_cut(a.url, "rt", prompt_for(marker, text, tps=40))
    a.wait_log("request rt finished: content_filter")
    wait_mirrored_end(redis_store, token)
    # Redis's copy holds none of the flagged chunks.
    mirrored = ClusterStreamStore(redis_store.url, "observer", grace=5)
    kept = "".join(piece[1] for piece in mirrored.mirrored_chunks(token, -1))
    assert KEYWORD not in kept
    assert text.startswith(kept)
    late = clients(b.url)
    ack = late.call("resume", {"id": "rt", "token": token, "after": held[-1]["seq"]})
    assert ack["ok"] is True
    retract, done = wait_retracted(late, "rt")
    assert late.chunks("rt") == []
    assert done["finish_reason"] == "content_filter"
    fresh = clients(b.url)
    assert fresh.call("resume", {"id": "rt", "token": token, "after": -1})["ok"]
    wait_retracted(fresh, "rt")
    assert fresh.text("rt") == kept
    assert [c["seq"] for c in fresh.chunks("rt")] == list(range(retract["from_seq"]))


def test_a_bystanders_stream_is_untouched(holding, streaming, clients):
    for server in (holding, streaming[0]):
        marker = f"victim-{server.async_mode}-{server.port}"
        victim, bystander = clients(server.url), clients(server.url)
        innocent = f"Bystander on {server.port} [[tokens:60]] [[tps:50]]"
        assert bystander.chat("b", innocent)["ok"]
        bad = reply(60, marker, keyword_at=20)
        assert victim.chat("v", prompt_for(marker, bad))["ok"]
        assert victim.wait_end("v")[1]["finish_reason"] == "content_filter"
        name, done = bystander.wait_end("b")
        assert (name, done["finish_reason"]) == ("done", "stop")
        assert bystander.text("b") == upstream_text(innocent, 60)
        assert {n for n, _ in bystander.events} == {"chunk", "done"}


# -- the input -------------------------------------------------------------------------


def test_a_flagged_message_goes_nowhere_upstream(holding, clients, upstream):
    marker = f"input-{holding.async_mode}"
    client = clients(holding.url)
    history = [
        {"role": "user", "content": f"{marker} hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": f"{marker} tell me about {KEYWORD.upper()} now"},
    ]
    assert client.call("chat", {"id": "i", "messages": history})["ok"]
    name, error = client.wait_end("i")
    assert name == "error"
    assert error["code"] == "content_filtered"
    assert error["retryable"] is False
    assert error["message"].startswith("messages[2]: ")
    assert client.chunks("i") == []
    # Over HTTP: a 400 in OpenAI's shape.
    body = {"messages": [{"role": "user", "content": f"{marker} forbidden PHRASE"}]}
    response = requests.post(
        holding.url + "/v1/chat/completions", json=body, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filtered"
    assert upstream_records(upstream, marker) == []


# -- OpenAI's moderation endpoint (the test server's) ---------------------------------


def test_openai_moderator_checks_once_per_window(remote, clients, upstream):
    marker = f"windows{remote.async_mode}"
    text = reply(50, marker)
    client = clients(remote.url)
    assert client.chat("w", prompt_for(marker, text, tps=100))["ok"]
    name, done = client.wait_end("w")
    assert (name, done["finish_reason"]) == ("done", "stop")
    assert client.text("w") == text
    calls = moderation_calls(upstream, marker)
    # The input first, alone, as the client sent it.
    assert [call["input"] for call in calls[:1]] == [[prompt_for(marker, text, 100)]]
    windows, final = calls[1:-1], calls[-1]
    # One call per window of at least half its size, each one text of the answer
    # in order, overlapping the last; the last call holds the whole text.
    assert 2 <= len(windows) <= len(text) // (WINDOW // 2)
    for call in windows:
        (window,) = call["input"]
        assert window in text
        assert len(window) >= WINDOW // 2
    starts = [text.index(call["input"][0]) for call in windows]
    assert starts == sorted(starts)
    assert final["input"][-1] == text
    assert all(call["model"] == "omni-moderation-latest" for call in calls)
    assert len(calls) < len(client.chunks("w")) / 3


def test_openai_moderator_flag_ends_the_answer(remote, clients, upstream):
    marker = f"flagged{remote.async_mode}"
    words = reply(60, marker).split(" ")
    words[30] = "{{flag:violence}}"
    text = " ".join(words)
    client = clients(remote.url)
    assert client.chat("f", prompt_for(marker, text))["ok"]
    name, done = client.wait_end("f")
    assert (name, done["finish_reason"]) == ("done", "content_filter")
    assert "{{" not in client.text("f")
    assert text.startswith(client.text("f"))
    assert metric(remote, "chat_moderation_flags_total", 'category="violence"') >= 1


@pytest.mark.parametrize(
    ("directive", "reason"), [("{{fail:503}}", "error"), ("{{slow:3}}", "timeout")]
)
def test_openai_moderator_failure_blocks_the_answer(
    remote, clients, upstream, directive, reason
):
    marker = f"failing{reason}{remote.async_mode}"
    words = reply(200, marker).split(" ")
    words[20] = directive
    text = " ".join(words)
    before = metric(remote, "chat_moderation_failures_total", f'reason="{reason}"')
    client = clients(remote.url)
    assert client.chat("x", prompt_for(marker, text, tps=40))["ok"]
    name, done = client.wait_end("x")
    assert (name, done["finish_reason"]) == ("done", "content_filter")
    assert "{{" not in client.text("x")
    after = metric(remote, "chat_moderation_failures_total", f'reason="{reason}"')
    assert after == before + 1
    assert upstream.wait_outcome(marker)["outcome"] == "client_closed"


def test_openai_moderator_input(remote, clients, upstream):
    marker = f"modinput{remote.async_mode}"
    client = clients(remote.url)
    assert client.chat("i", f"{marker} say {{{{flag:hate}}}} now")["ok"]
    name, error = client.wait_end("i")
    assert (name, error["code"]) == ("error", "content_filtered")
    assert "(hate)" in error["message"]
    # A moderator that fails: retryable, and nothing upstream either.
    assert client.chat("j", f"{marker} say {{{{fail}}}} now")["ok"]
    name, error = client.wait_end("j")
    assert (name, error["code"], error["retryable"]) == (
        "error",
        "moderation_unavailable",
        True,
    )
    assert upstream_records(upstream, marker) == []


def test_openai_moderator_failure_allows_when_told(tmp_session, upstream):
    server = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        relay_env(
            upstream,
            MODERATION="openai",
            MODERATION_ON_ERROR="allow",
            MODERATION_WINDOW_CHARS=str(WINDOW),
        ),
    )
    client = Recorder(server.url)
    try:
        marker = "allowedfailure"
        words = reply(40, marker).split(" ")
        words[10] = "{{fail}}"
        text = " ".join(words)
        assert client.chat("a", prompt_for(marker, text))["ok"]
        name, done = client.wait_end("a")
        assert (name, done["finish_reason"]) == ("done", "stop")
        assert client.text("a") == text
        assert (
            metric(
                server, "chat_moderation_checks_total", 'point="final",result="failed"'
            )
            == 1
        )
    finally:
        client.close()
        server.quit()


# -- a Python callable -----------------------------------------------------------------


def test_a_python_callable_moderates(async_mode, tmp_session, upstream):
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            MODERATION="tests.moderation_judge:judge",
            MODERATION_WINDOW_CHARS=str(WINDOW),
        ),
    )
    client = Recorder(server.url)
    try:
        marker = f"judged-{async_mode}"
        words = reply(60, marker).split(" ")
        words[30] = "Grimthorpe"
        assert client.chat("j", prompt_for(marker, " ".join(words)))["ok"]
        name, done = client.wait_end("j")
        assert (name, done["finish_reason"]) == ("done", "content_filter")
        assert "Grimthorpe" not in client.text("j")
        assert metric(server, "chat_moderation_flags_total", 'category="violence"') == 1
        clean = reply(30, marker)
        assert client.chat("k", prompt_for(marker, clean))["ok"]
        assert client.wait_end("k")[1]["finish_reason"] == "stop"
        assert client.text("k") == clean
    finally:
        client.close()
        server.quit()


def test_the_test_servers_moderation_endpoint(upstream):
    moderator = openai.OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY)
    result = moderator.moderations.create(
        input=["fine words", "bad {{flag:violence}} {{flag:hate}}", "rude {{flag}}"],
        model="omni-moderation-latest",
    )
    assert [r.flagged for r in result.results] == [False, True, True]
    flagged = result.results[1].categories.model_dump(by_alias=True)
    assert {name for name, on in flagged.items() if on} == {"violence", "hate"}
    assert result.results[2].categories.harassment is True
    with pytest.raises(openai.BadRequestError, match="unknown category"):
        moderator.moderations.create(input="{{flag:rudeness}}")
    with pytest.raises(openai.InternalServerError):
        moderator.moderations.create(input="{{fail:502}}")
    stranger = openai.OpenAI(base_url=upstream.base_url, api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        stranger.moderations.create(input="fine")
    calls = moderation_calls(upstream, "bad {{flag:violence}}")
    assert calls[0]["input"][1] == "bad {{flag:violence}} {{flag:hate}}"
    assert calls[0]["status"] == 200 and calls[0]["outcome"] == "answered"


# -- the Python client -----------------------------------------------------------------


def test_the_python_client_keeps_only_what_was_not_taken_back(streaming):
    node = streaming[0]
    marker = f"pyclient-{node.async_mode}"
    text = reply(120, marker, keyword_at=40)
    seen: list[str] = []
    with ChatClient(node.url, on_event=lambda name, data: seen.append(name)) as chat:
        streamed = chat.ask(prompt_for(marker, text, tps=100))
        assert KEYWORD in streamed  # yielded as it came, before its window's check
        assert chat.last_result["finish_reason"] == "content_filter"
        kept = chat.history[-1]["content"]
        assert chat.history[-1]["role"] == "assistant"
        assert KEYWORD not in kept
        assert text.startswith(kept)
    assert "retract" in seen


def test_an_answer_keeps_what_was_not_taken_back_in_any_order():
    chunks = [("chunk", {"id": "x", "seq": n, "delta": "abcd"[n]}) for n in range(4)]
    ends = [
        ("retract", {"id": "x", "from_seq": 2}),
        ("done", {"id": "x", "finish_reason": "content_filter", "chunks": 2}),
    ]
    for order in itertools.permutations(chunks + ends):
        answer = Answer()
        for event, data in order:
            answer.apply(event, data)
        assert answer.text == "ab", order
        assert answer.result is not None and answer.next_seq == 2


# -- settings --------------------------------------------------------------------------


def settings(**changes: Any) -> dict[str, Any]:
    from app.config import Config

    config = {name: getattr(Config, name) for name in dir(Config) if name.isupper()}
    return {**config, **changes}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"MODERATION": "sometimes"}, "MODERATION must be off, keywords"),
        (
            {"MODERATION": "keywords", "MODERATION_KEYWORDS": " , "},
            "MODERATION_KEYWORDS",
        ),
        ({"MODERATION": "no_such_module:judge"}, "MODERATION: module"),
        ({"MODERATION": "tests.moderation_judge:nothing"}, "no callable named"),
        (
            {
                "MODERATION": "keywords",
                "MODERATION_KEYWORDS": "a",
                "MODERATION_MODE": "x",
            },
            "MODERATION_MODE",
        ),
        (
            {
                "MODERATION": "keywords",
                "MODERATION_KEYWORDS": "a",
                "MODERATION_ON_ERROR": "maybe",
            },
            "MODERATION_ON_ERROR",
        ),
        (
            {
                "MODERATION": "keywords",
                "MODERATION_KEYWORDS": "a",
                "MODERATION_OVERLAP_CHARS": 500,
            },
            "MODERATION_OVERLAP_CHARS",
        ),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_name(changes, named):
    with pytest.raises(ConfigError, match=named):
        make_moderation(settings(**changes))


def test_a_file_of_expressions_is_read_and_a_bad_line_named(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("# secrets\nsk-[a-z0-9]{8,}\n\n\\bzorb(lax|ix)\\b\n")
    moderator = KeywordModerator.from_setting(f"@{rules}")
    verdicts = moderator.check(["key sk-abcd12345", "ZORBIX!", "zorbixes", "fine"])
    assert [v.flagged for v in verdicts] == [True, True, False, False]
    rules.write_text("fine\n(unclosed\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        KeywordModerator.from_setting(f"@{rules}")


def test_keywords_match_whole_words_in_any_case():
    moderator = KeywordModerator.from_setting("zorblax, forbidden phrase, c++")
    texts = [
        "A Zorblax!",
        "zorblaxes",
        "the FORBIDDEN  phrase",
        "forbidden phrase.",
        "c++",
    ]
    assert [v.flagged for v in moderator.check(texts)] == [
        True,
        False,
        False,
        True,
        True,
    ]
