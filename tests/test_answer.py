"""The Python client's answer state machine, event by event, with no server.

Events come in any order here, as they may from python-socketio's threaded client,
which runs each handler on a thread of its own."""

import threading

import pytest

from client import ChatConnectionError, ChatError, Delta
from client.answer import ANSWER, GAP_SECONDS, REASONING, Answer


def chunk(seq: int, delta: str, kind: str | None = None) -> dict:
    payload = {"id": "x", "seq": seq, "delta": delta}
    if kind is not None:
        payload["kind"] = kind
    return payload


def apply_all(answer: Answer, events: list[tuple[str, dict]]) -> list[Delta]:
    out: list[Delta] = []
    for event, data in events:
        out += answer.apply(event, data)
    return out


# seq order


def test_out_of_order_chunks_come_out_in_seq_order():
    answer = Answer()
    assert answer.apply("chunk", chunk(2, "c")) == []
    assert answer.apply("chunk", chunk(1, "b")) == []
    assert answer.pending.keys() == {1, 2}
    assert answer.apply("chunk", chunk(0, "a")) == [
        Delta(ANSWER, "a"),
        Delta(ANSWER, "b"),
        Delta(ANSWER, "c"),
    ]
    assert answer.next_seq == 3
    assert answer.pending == {}
    assert answer.text == "abc"


def test_duplicates_after_a_resume_are_dropped():
    # Held: 0, 1 in order and 3 past a hole; a resume after seq 1 replays 2 and 3,
    # and a second replay (a resume crossing the first) repeats all of them.
    answer = Answer()
    apply_all(answer, [("chunk", chunk(0, "a")), ("chunk", chunk(1, "b"))])
    answer.apply("chunk", chunk(3, "d"))
    assert answer.next_seq - 1 == 1  # what the resume asks to continue after
    replay = [("chunk", chunk(seq, "abcd"[seq])) for seq in (2, 3)]
    assert apply_all(answer, replay) == [Delta(ANSWER, "c"), Delta(ANSWER, "d")]
    again = [("chunk", chunk(seq, "abcd"[seq])) for seq in range(4)]
    assert apply_all(answer, again) == []
    assert answer.text == "abcd"
    assert answer.next_seq == 4


def test_a_duplicate_of_a_chunk_held_past_a_hole_is_dropped():
    answer = Answer()
    answer.apply("chunk", chunk(1, "b"))
    assert answer.apply("chunk", chunk(1, "B")) == []
    assert answer.apply("chunk", chunk(0, "a")) == [
        Delta(ANSWER, "a"),
        Delta(ANSWER, "b"),
    ]


@pytest.mark.parametrize("data", [{"seq": "0", "delta": "a"}, {"seq": 0}, {}])
def test_a_malformed_chunk_changes_nothing(data):
    answer = Answer()
    assert answer.apply("chunk", {"id": "x", **data}) == []
    assert answer.next_seq == 0 and answer.pending == {}
    assert not answer.answered


def test_a_done_that_overtakes_its_last_chunks_waits_for_them():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    done = {"id": "x", "finish_reason": "stop", "chunks": 3}
    assert answer.apply("done", done) == []
    assert answer.result is None
    assert answer.done_early == done
    assert answer.apply("chunk", chunk(2, "c")) == []
    assert answer.result is None
    assert answer.apply("chunk", chunk(1, "b")) == [
        Delta(ANSWER, "b"),
        Delta(ANSWER, "c"),
    ]
    assert answer.result == done
    assert answer.done_early is None
    assert answer.text == "abc"


def test_a_done_without_a_chunk_count_ends_the_answer_at_once():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    answer.apply("done", {"id": "x", "finish_reason": "stop"})
    assert answer.result == {"id": "x", "finish_reason": "stop"}


def test_events_applied_from_many_threads_give_the_exact_answer():
    # Each event on a thread of its own, as python-socketio hands them over, the
    # done among them; the caller's lock serialises them in whatever order.
    words = [f"w{n} " for n in range(200)]
    events = [("chunk", chunk(n, word)) for n, word in enumerate(words)]
    events.insert(150, ("done", {"id": "x", "finish_reason": "stop", "chunks": 200}))
    answer, lock, out = Answer(), threading.Lock(), []

    def deliver(event: str, data: dict) -> None:
        with lock:
            out.extend(answer.apply(event, data))

    threads = [threading.Thread(target=deliver, args=event) for event in events]
    for thread in reversed(threads):
        thread.start()
    for thread in threads:
        thread.join()
    assert "".join(delta.text for delta in out) == "".join(words)
    assert answer.result["chunks"] == 200
    assert answer.gap_since is None


# Gaps


def test_a_hole_is_noted_until_it_fills():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    assert answer.gap_since is None
    answer.apply("chunk", chunk(2, "c"))
    seen = answer.gap_since
    assert seen is not None
    answer.apply("chunk", chunk(3, "d"))
    assert answer.gap_since == seen  # the same hole: its bound does not move
    answer.apply("chunk", chunk(1, "b"))
    assert answer.gap_since is None and answer.gap_resumes == 0


def test_a_done_waiting_for_a_chunk_is_a_hole():
    answer = Answer()
    answer.apply("done", {"id": "x", "chunks": 1})
    assert answer.gap_since is not None
    answer.apply("chunk", chunk(0, "a"))
    assert answer.gap_since is None
    assert answer.result == {"id": "x", "chunks": 1}


def test_a_gap_resume_restarts_the_bound_and_a_resume_after_a_drop_resets_it():
    answer = Answer()
    answer.apply("ack", {"ok": True, "id": "x", "resume_token": "t"})
    answer.apply("chunk", chunk(1, "b"))
    first = answer.gap_since
    answer.gap_resume_sent()
    assert answer.gap_resumes == 1
    assert answer.gap_since >= first
    answer.apply("disconnected", {"reason": "transport error"})
    answer.apply("resume_ack", {"ok": True, "id": "x", "replayed": 0})
    assert answer.away_since is None
    assert answer.gap_resumes == 0 and answer.gap_since is not None


def test_a_hole_that_cannot_be_filled_names_the_missing_chunk():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    answer.apply("chunk", chunk(2, "c"))
    error = answer.lost(f"still missing after 3 resumes of {GAP_SECONDS:g}s each")
    assert error.code == "lost_chunks"
    assert error.retryable is True
    assert "chunk 1 " in error.message


# Reasoning


def test_reasoning_chunks_are_marked_and_kept_apart_from_the_answer():
    answer = Answer()
    out = apply_all(
        answer,
        [
            ("chunk", chunk(0, "Let me ", REASONING)),
            ("chunk", chunk(1, "think.", REASONING)),
            ("chunk", chunk(2, "Blue, ")),
            ("chunk", chunk(3, "mostly.")),
        ],
    )
    assert out == [
        Delta(REASONING, "Let me "),
        Delta(REASONING, "think."),
        Delta(ANSWER, "Blue, "),
        Delta(ANSWER, "mostly."),
    ]
    assert answer.reasoning == "Let me think."
    assert answer.text == "Blue, mostly."


def test_reasoning_and_answer_share_one_seq_space_across_the_switch():
    answer = Answer()
    # The first answer chunk overtakes the last reasoning one, then comes again.
    assert answer.apply("chunk", chunk(0, "hm", REASONING)) == [Delta(REASONING, "hm")]
    assert answer.apply("chunk", chunk(2, "yes")) == []
    assert answer.apply("chunk", chunk(1, "m.", REASONING)) == [
        Delta(REASONING, "m."),
        Delta(ANSWER, "yes"),
    ]
    assert answer.apply("chunk", chunk(2, "yes")) == []
    assert (answer.reasoning, answer.text) == ("hmm.", "yes")


def test_feed_gives_the_answer_text_only():
    answer = Answer()
    assert answer.feed("chunk", chunk(0, "hm", REASONING)) == []
    assert answer.feed("chunk", chunk(1, "yes")) == ["yes"]


def test_a_stream_of_reasoning_alone_ends_with_no_answer_text():
    answer = Answer()
    answer.apply("chunk", chunk(0, "Thinking at length", REASONING))
    done = {"id": "x", "finish_reason": "length", "chunks": 1}
    answer.apply("done", done)
    assert answer.result == done
    assert answer.text == ""
    assert answer.reasoning == "Thinking at length"


def test_a_kind_other_than_reasoning_is_answer_text():
    # What a client that ignores kind would show: no text is lost.
    answer = Answer()
    assert answer.apply("chunk", chunk(0, "a", "something_new")) == [Delta(ANSWER, "a")]


def test_a_resume_in_the_middle_of_the_reasoning_gives_each_chunk_once():
    answer = Answer()
    answer.apply("ack", {"ok": True, "id": "x", "resume_token": "t"})
    answer.apply("chunk", chunk(0, "a", REASONING))
    answer.apply("chunk", chunk(1, "b", REASONING))
    answer.apply("disconnected", {"reason": "transport error"})
    answer.apply("resume_ack", {"ok": True, "id": "x", "replayed": 2})
    replay = [
        ("chunk", chunk(1, "b", REASONING)),
        ("chunk", chunk(2, "c", REASONING)),
        ("chunk", chunk(3, "D")),
    ]
    assert apply_all(answer, replay) == [Delta(REASONING, "c"), Delta(ANSWER, "D")]
    assert (answer.reasoning, answer.text) == ("abc", "D")


# Acks and errors


@pytest.mark.parametrize(
    "error, retryable",
    [
        ({"code": "shutting_down", "message": "restarting", "retryable": True}, True),
        ({"code": "invalid_request", "message": "bad", "retryable": False}, False),
        ({"code": "busy", "message": "an older server says no more"}, False),
    ],
)
def test_a_negative_ack_says_whether_to_retry(error, retryable):
    answer = Answer()
    with pytest.raises(ChatError) as caught:
        answer.apply("ack", {"ok": False, "error": error})
    assert caught.value.code == error["code"]
    assert caught.value.message == error["message"]
    assert caught.value.retryable is retryable
    assert not answer.acked


def test_an_error_event_ends_the_request_with_its_code():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    error = {
        "id": "x",
        "code": "upstream_timeout",
        "message": "slow",
        "retryable": True,
    }
    with pytest.raises(ChatError) as caught:
        answer.apply("error", error)
    assert (caught.value.code, caught.value.retryable) == ("upstream_timeout", True)


def test_unknown_id_after_the_done_changes_nothing():
    answer = Answer()
    answer.apply("chunk", chunk(0, "a"))
    answer.apply("done", {"id": "x", "chunks": 1})
    assert answer.apply("error", {"id": "x", "code": "unknown_id"}) == []
    assert answer.apply("stop_ack", {"ok": False}) == []
    assert answer.result == {"id": "x", "chunks": 1}


def test_a_refused_resume_is_said_by_its_ack_not_its_error_event():
    answer = Answer()
    answer.apply("ack", {"ok": True, "id": "x", "resume_token": "t"})
    answer.apply("disconnected", {"reason": "transport error"})
    assert answer.apply("error", {"id": "x", "code": "resume_denied"}) == []
    with pytest.raises(ChatConnectionError) as caught:
        answer.apply("resume_ack", {"ok": False, "error": {"code": "resume_denied"}})
    assert caught.value.code == "disconnected"


def test_answered_once_the_server_says_anything():
    answer = Answer()
    assert not answer.answered
    answer.apply("chunk", chunk(1, "b", REASONING))
    assert answer.answered
