"""A chunk lost on a live connection: the Python client asks for it again with
``resume`` on that connection, and yields the exact answer; when the server cannot
send it again, the stream ends with a retryable ``lost_chunks`` error, not a hang.

With several nodes such losses come from Redis pub/sub while Redis restarts; here the
client's own connection drops the chunk event before the client sees it, against a
real single-node server."""

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from client import ChatClient, ChatError
from client.answer import GAP_RESUMES, Answer
from tests.conftest import Relay, hold_emits, relay_env, upstream_text


def lose_chunk(chat: ChatClient, seq: int, every_time: bool = False) -> list[int]:
    """Make the client's connection lose chunk ``seq`` once (or every time it comes):
    the event reaches the socket and goes no further. Returns the seqs lost."""
    handler = chat._sio.handlers["/"]["chunk"]
    lost: list[int] = []

    def lossy(data: Any) -> None:
        if data.get("seq") == seq and (every_time or not lost):
            lost.append(seq)
            return
        handler(data)

    chat._sio.on("chunk", lossy)
    return lost


def sent_by(chat: ChatClient) -> list[tuple[str, Any]]:
    """Record every event the client sends over its connection."""
    sent: list[tuple[str, Any]] = []
    emit = chat._sio.emit

    def recording(event: str, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        sent.append((event, data))
        return emit(event, data, *args, **kwargs)

    chat._sio.emit = recording
    return sent


def received_by(chat: ChatClient) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    chat.on_event = lambda *event: events.append(event)
    return events


def resumes(sent: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [data for name, data in sent if name == "resume"]


@pytest.fixture(scope="module")
def forgetful_relay(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay that forgets an ended answer 0.3 s after its end."""
    server = Relay(
        tmp_session, async_mode, relay_env(upstream, RESUME_GRACE_SECONDS="0.3")
    )
    yield server
    server.process.proc.send_signal(signal.SIGQUIT)  # no graceful drain needed
    server.process.stop()


def test_a_lost_chunk_is_fetched_again_on_the_same_connection(relay):
    prompt = f"lose one chunk {relay.async_mode} [[tokens:150]] [[tps:100]]"
    with ChatClient(relay.url) as chat:
        received, sent = received_by(chat), sent_by(chat)
        lost = lose_chunk(chat, 10)
        deltas = list(chat.stream(prompt))
        assert chat.last_result["finish_reason"] == "stop"
    assert lost == [10]
    assert "".join(deltas) == upstream_text(prompt, 150)
    # Asked once, from the last contiguous seq, while the answer was still live.
    [resume] = resumes(sent)
    assert resume["after"] == 9
    names = [name for name, _ in received]
    assert [d["ok"] for n, d in received if n == "gap_resume_ack"] == [True]
    assert "resume_ack" not in names  # the connection never dropped
    assert names[-1] == "done"
    assert f"request {resume['id']} resumed after seq 9" in relay.process.log_text()


def test_a_done_that_overtakes_a_lost_last_chunk_waits_for_it(relay):
    prompt = f"lose the last chunk {relay.async_mode} [[tokens:20]]"
    with ChatClient(relay.url) as chat:
        sent = sent_by(chat)
        lose_chunk(chat, 19)
        text = chat.ask(prompt)
        assert chat.last_result["chunks"] == 20
    assert text == upstream_text(prompt, 20)
    # The answer had ended: the server sent the missing chunk and the done again.
    assert [resume["after"] for resume in resumes(sent)] == [18]


def test_a_chunk_lost_every_time_ends_with_lost_chunks_and_a_stop(relay, upstream):
    marker = f"lose it always {relay.async_mode}"
    # 30 s of answer: the client gives up, and stops it, long before its end.
    prompt = f"{marker} [[tokens:3000]] [[tps:100]]"
    with ChatClient(relay.url) as chat:
        received, sent = received_by(chat), sent_by(chat)
        lose_chunk(chat, 5, every_time=True)
        deltas: list[str] = []
        with pytest.raises(ChatError) as caught:
            for delta in chat.stream(prompt):
                deltas.append(delta)
        assert chat.history == []
        # The client gave up, so it stopped the generation: its upstream stream
        # closes while the client is still connected, well before the answer's end.
        record = upstream.wait_outcome(marker, timeout=30)
        assert record["outcome"] == "client_closed"
        assert record["chunks_sent"] < 3000
    assert caught.value.code == "lost_chunks"
    assert caught.value.retryable is True
    assert f"after {GAP_RESUMES} resumes" in caught.value.message
    # Each resume was sent and taken; each replay lost chunk 5 again.
    assert [resume["after"] for resume in resumes(sent)] == [4] * GAP_RESUMES
    acks = [d["ok"] for n, d in received if n == "gap_resume_ack"]
    assert acks == [True] * GAP_RESUMES
    assert "".join(deltas) == upstream_text(prompt, 3000, first=5)
    assert "stop" in [name for name, _ in sent]


def test_a_gap_the_server_has_forgotten_ends_with_lost_chunks(forgetful_relay):
    with ChatClient(forgetful_relay.url) as chat:
        received = received_by(chat)
        lose_chunk(chat, 19)
        # The client asks again only once the server has forgotten the answer.
        hold_emits(chat, "resume", lambda _: forgetful_relay.health()["streams"] == 0)
        prompt = "forgotten [[tokens:20]]"
        deltas: list[str] = []
        with pytest.raises(ChatError) as caught:
            for delta in chat.stream(prompt):
                deltas.append(delta)
        assert caught.value.code == "lost_chunks"
        assert caught.value.retryable is True
        assert "resume_denied" in caught.value.message
        assert chat.history == []
        assert [d["ok"] for n, d in received if n == "gap_resume_ack"] == [False]
        assert "".join(deltas) == upstream_text(prompt, 20, first=19)
        # The connection goes on.
        assert chat.ask("after the loss [[tokens:3]]")
        assert len(chat.history) == 2


# The hole bookkeeping, event by event


def test_answer_notes_a_hole_in_seq_until_it_fills():
    answer = Answer()
    answer.feed("ack", {"ok": True, "id": "x", "resume_token": "t"})
    assert answer.feed("chunk", {"id": "x", "seq": 0, "delta": "a"}) == ["a"]
    assert answer.gap_since is None
    assert answer.feed("chunk", {"id": "x", "seq": 2, "delta": "c"}) == []
    seen = answer.gap_since
    assert seen is not None
    answer.feed("chunk", {"id": "x", "seq": 3, "delta": "d"})
    assert answer.gap_since == seen  # the same hole: its bound does not move
    assert answer.feed("chunk", {"id": "x", "seq": 1, "delta": "b"}) == ["b", "c", "d"]
    assert answer.gap_since is None
    # A done counting a chunk not yet here is a hole too, until the chunk comes.
    assert answer.feed("done", {"id": "x", "chunks": 5}) == []
    assert answer.gap_since is not None and answer.result is None
    assert answer.feed("chunk", {"id": "x", "seq": 4, "delta": "e"}) == ["e"]
    assert answer.gap_since is None
    assert answer.result == {"id": "x", "chunks": 5}
    assert answer.text == "abcde"


def test_answer_counts_resumes_per_hole_and_starts_again_for_the_next():
    answer = Answer()
    answer.feed("chunk", {"id": "x", "seq": 1, "delta": "b"})
    answer.gap_resume_sent()
    answer.gap_resume_sent()
    assert answer.gap_resumes == 2
    answer.feed("chunk", {"id": "x", "seq": 0, "delta": "a"})
    assert answer.gap_resumes == 0
    answer.feed("chunk", {"id": "x", "seq": 3, "delta": "d"})
    assert answer.gap_resumes == 0 and answer.gap_since is not None


def test_answer_takes_a_refused_gap_resume_as_lost_chunks():
    answer = Answer()
    answer.feed("ack", {"ok": True, "id": "x", "resume_token": "t"})
    answer.feed("chunk", {"id": "x", "seq": 0, "delta": "a"})
    answer.feed("chunk", {"id": "x", "seq": 2, "delta": "c"})
    answer.gap_resume_sent()
    # Not final: the server could not answer (its Redis away?); the next try may.
    internal = {"code": "internal", "message": "the server failed"}
    assert answer.feed("gap_resume_ack", {"ok": False, "error": internal}) == []
    # The refusal's error event is said again by the negative ack.
    assert answer.feed("error", {"id": "x", "code": "resume_denied"}) == []
    denied = {"code": "resume_denied", "message": "no resumable request"}
    with pytest.raises(ChatError) as caught:
        answer.feed("gap_resume_ack", {"ok": False, "error": denied})
    assert caught.value.code == "lost_chunks"
    assert caught.value.retryable is True
    assert "chunk 1" in caught.value.message
