"""The Python client's answer state machine, event by event, with no server.

Events come in any order here, as they may from python-socketio's threaded client,
which runs each handler on a thread of its own."""

import json
import threading

import pytest

from client import ChatConnectionError, ChatError, Delta, ToolCallRef
from client.answer import ANSWER, GAP_SECONDS, REASONING, REFUSAL, TOOL_CALL, Answer


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


# Tool calls and refusals


def call_chunk(seq: int, index: int, arguments: str, **first: str) -> dict:
    """A tool-call chunk; ``first`` is the id and name a call's first one brings."""
    return {
        "id": "x",
        "seq": seq,
        "kind": TOOL_CALL,
        "tool_call": {"index": index, **first, "arguments": arguments},
    }


def shaped(call_id: str, name: str, arguments: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


PARIS = ("call_1", "get_weather", '{"city": "Paris"}')
ROME = ("call_2", "get_weather", '{"city": "Rome"}')


def test_tool_call_chunks_are_assembled_per_index_in_seq_order():
    answer = Answer()
    out = apply_all(
        answer,
        [
            ("chunk", chunk(0, "Checking. ")),
            ("chunk", call_chunk(1, 0, '{"ci', id="call_1", name="get_weather")),
            ("chunk", call_chunk(2, 1, "", id="call_2", name="get_weather")),
            ("chunk", call_chunk(3, 0, 'ty": "Par')),
            ("chunk", call_chunk(4, 1, '{"city": "Rome"}')),
            ("chunk", call_chunk(5, 0, 'is"}')),
        ],
    )
    weather = "get_weather"
    assert out == [
        Delta(ANSWER, "Checking. "),
        Delta(TOOL_CALL, '{"ci', ToolCallRef(0, "call_1", weather)),
        Delta(TOOL_CALL, "", ToolCallRef(1, "call_2", weather)),
        # Later fragments name their call too.
        Delta(TOOL_CALL, 'ty": "Par', ToolCallRef(0, "call_1", weather)),
        Delta(TOOL_CALL, '{"city": "Rome"}', ToolCallRef(1, "call_2", weather)),
        Delta(TOOL_CALL, 'is"}', ToolCallRef(0, "call_1", weather)),
    ]
    assert answer.tool_calls == [shaped(*PARIS), shaped(*ROME)]
    assert answer.text == "Checking. "  # the arguments are no answer text
    assert answer.feed("chunk", chunk(6, " Done.")) == [" Done."]


def test_a_tool_call_delta_unpacks_as_a_pair():
    # README code unpacks every delta as (kind, text).
    delta = Delta(TOOL_CALL, '{"a"', ToolCallRef(0, "call_1", "f"))
    kind, text = delta
    assert (kind, text) == (TOOL_CALL, '{"a"')
    assert len(delta) == 2 and delta[1] == '{"a"'
    assert delta.tool_call.name == "f"
    assert delta != Delta(TOOL_CALL, '{"a"', ToolCallRef(1, "call_2", "f"))
    assert delta != (TOOL_CALL, '{"a"')
    assert Delta(ANSWER, "a") == (ANSWER, "a")
    assert Delta(ANSWER, "a").tool_call is None
    assert "ToolCallRef(index=0" in repr(delta)
    assert len({delta, Delta(TOOL_CALL, '{"a"', ToolCallRef(0, "call_1", "f"))}) == 1


def test_a_late_id_is_kept_and_a_repeated_one_changes_nothing():
    answer = Answer()
    out = apply_all(
        answer,
        [
            ("chunk", call_chunk(0, 0, "{", name="f")),
            ("chunk", call_chunk(1, 0, "}", id="call_9")),
            ("chunk", call_chunk(2, 0, "", id="call_other", name="g")),
        ],
    )
    assert [delta.tool_call for delta in out] == [
        ToolCallRef(0, "", "f"),
        ToolCallRef(0, "call_9", "f"),
        ToolCallRef(0, "call_9", "f"),
    ]
    assert answer.tool_calls == [shaped("call_9", "f", "{}")]


def test_tool_call_chunks_from_many_threads_give_the_exact_calls_and_text():
    # Text and three calls interleaved, each event on a thread of its own, the
    # done among them.
    arguments = [json.dumps({"city": city, "days": list(range(30))}) for city in "ABC"]
    events, seq = [], 0
    for n in range(60):
        events.append(("chunk", chunk(seq, f"w{n} ")))
        seq += 1
    pieces = {
        index: [text[i : i + 7] for i in range(0, len(text), 7)]
        for index, text in enumerate(arguments)
    }
    for step in range(max(map(len, pieces.values()))):
        for index in range(3):
            if step < len(pieces[index]):
                first = {"id": f"call_{index}", "name": "f"} if step == 0 else {}
                events.append(
                    ("chunk", call_chunk(seq, index, pieces[index][step], **first))
                )
                seq += 1
    calls = [shaped(f"call_{index}", "f", arguments[index]) for index in range(3)]
    done = {
        "id": "x",
        "finish_reason": "tool_calls",
        "chunks": seq,
        "tool_calls": calls,
    }
    events.insert(len(events) // 2, ("done", done))
    answer, lock, out = Answer(), threading.Lock(), []

    def deliver(event: str, data: dict) -> None:
        with lock:
            out.extend(answer.apply(event, data))

    threads = [threading.Thread(target=deliver, args=event) for event in events]
    for thread in reversed(threads):
        thread.start()
    for thread in threads:
        thread.join()
    assert answer.result == done
    assert answer.assembled_tool_calls == calls
    assert answer.text == "".join(f"w{n} " for n in range(60))
    for index in range(3):
        assert (
            "".join(d.text for d in out if d.tool_call and d.tool_call.index == index)
            == arguments[index]
        )
    assert answer.gap_since is None


def test_tool_call_duplicates_are_dropped_and_a_hole_holds_the_rest_back():
    answer = Answer()
    answer.apply("chunk", call_chunk(0, 0, '{"a"', id="call_1", name="f"))
    assert answer.apply("chunk", call_chunk(2, 0, "}")) == []
    assert answer.gap_since is not None
    assert answer.apply("chunk", call_chunk(2, 0, "}")) == []  # held already
    assert answer.apply("chunk", call_chunk(0, 0, '{"a"', id="call_1", name="f")) == []
    assert answer.tool_calls == [shaped("call_1", "f", '{"a"')]
    assert [d.text for d in answer.apply("chunk", call_chunk(1, 0, ": 1"))] == [
        ": 1",
        "}",
    ]
    assert answer.tool_calls == [shaped("call_1", "f", '{"a": 1}')]
    assert answer.gap_since is None


def test_a_resume_in_the_middle_of_a_calls_arguments_gives_the_exact_rest():
    # The arguments cut inside a JSON string and inside "é" as the server's
    # fragments may be; the replay repeats what was held.
    whole = '{"city": "Liège", "unit": "celsius"}'
    pieces = ['{"city": "Li', "è", 'ge", "un', 'it": "celsius"}']
    answer = Answer()
    answer.apply("ack", {"ok": True, "id": "x", "resume_token": "t"})
    held = apply_all(
        answer,
        [
            ("chunk", chunk(0, "Let me look.")),
            ("chunk", call_chunk(1, 0, pieces[0], id="call_1", name="get_weather")),
            ("chunk", call_chunk(2, 0, pieces[1])),
        ],
    )
    answer.apply("disconnected", {"reason": "transport error"})
    assert answer.next_seq - 1 == 2  # what the resume asks to continue after
    answer.apply("resume_ack", {"ok": True, "id": "x", "replayed": 3})
    rest = apply_all(
        answer,
        [
            ("chunk", call_chunk(2, 0, pieces[1])),
            ("chunk", call_chunk(3, 0, pieces[2])),
            ("chunk", call_chunk(4, 0, pieces[3])),
            ("done", {"id": "x", "finish_reason": "tool_calls", "chunks": 5}),
        ],
    )
    assert [d.text for d in rest] == pieces[2:]
    assert "".join(d.text for d in held[1:] + rest) == whole
    assert answer.tool_calls == [shaped("call_1", "get_weather", whole)]


def test_the_dones_tool_calls_agree_with_the_assembled_ones(caplog):
    answer = Answer()
    apply_all(
        answer,
        [
            ("chunk", call_chunk(0, 0, PARIS[2], id=PARIS[0], name=PARIS[1])),
            ("chunk", call_chunk(1, 1, ROME[2], id=ROME[0], name=ROME[1])),
        ],
    )
    calls = [shaped(*PARIS), shaped(*ROME)]
    answer.apply("done", {"id": "x", "chunks": 2, "tool_calls": calls})
    assert answer.tool_calls == calls == answer.assembled_tool_calls
    assert caplog.records == []


def test_the_dones_tool_calls_win_when_they_disagree(caplog):
    answer = Answer()
    answer.apply("chunk", call_chunk(0, 0, '{"city": "Pa', id="call_1", name="f"))
    calls = [shaped("call_1", "f", '{"city": "Paris"}')]
    with caplog.at_level("WARNING", logger="client.answer"):
        answer.apply("done", {"id": "x", "chunks": 1, "tool_calls": calls})
    assert answer.tool_calls == calls
    assert answer.assembled_tool_calls == [shaped("call_1", "f", '{"city": "Pa')]
    assert "differ" in caplog.text


def test_a_done_without_tool_calls_leaves_the_assembled_ones():
    answer = Answer()
    answer.apply("chunk", call_chunk(0, 0, "{}", id="call_1", name="f"))
    answer.apply("done", {"id": "x", "finish_reason": "cancelled", "chunks": 1})
    assert answer.tool_calls == [shaped("call_1", "f", "{}")]


def test_a_done_waits_for_tool_call_chunks_it_counts():
    answer = Answer()
    answer.apply("chunk", call_chunk(1, 0, "}"))
    done = {"id": "x", "chunks": 2, "tool_calls": [shaped("call_1", "f", "{}")]}
    answer.apply("done", done)
    assert answer.result is None
    answer.apply("chunk", call_chunk(0, 0, "{", id="call_1", name="f"))
    assert answer.result == done
    assert answer.assembled_tool_calls == done["tool_calls"]


@pytest.mark.parametrize(
    "tool_call",
    [
        None,
        "{}",
        {"arguments": "{}"},
        {"index": "0", "arguments": "{}"},
        {"index": -1, "arguments": "{}"},
        {"index": True, "arguments": "{}"},
        {"index": 0, "arguments": {"city": "Paris"}},
        {"index": 0, "id": 7, "arguments": "{}"},
        {"index": 0, "name": ["f"], "arguments": "{}"},
    ],
)
def test_a_malformed_tool_call_chunk_changes_nothing(tool_call):
    answer = Answer()
    data = {"id": "x", "seq": 0, "kind": TOOL_CALL, "tool_call": tool_call}
    assert answer.apply("chunk", data) == []
    assert answer.next_seq == 0 and answer.pending == {} and answer.calls == {}


def test_a_refusal_is_shown_as_the_answer_and_kept_apart():
    answer = Answer()
    out = apply_all(
        answer,
        [
            ("chunk", chunk(0, "I can't ", REFUSAL)),
            ("chunk", chunk(1, "help with that.", REFUSAL)),
        ],
    )
    assert out == [Delta(REFUSAL, "I can't "), Delta(REFUSAL, "help with that.")]
    assert answer.refusal == "I can't help with that."
    assert answer.text == "I can't help with that."  # what the user saw
    assert Answer().feed("chunk", chunk(0, "No.", REFUSAL)) == ["No."]
