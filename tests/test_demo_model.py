"""The offline demo model: deterministic, on topic, markdown, paced, truncatable."""

import time

from app.chat_request import ChatRequest
from app.providers.demo import DemoProvider, compose, split_tokens


def ask(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def run(provider: DemoProvider, request: ChatRequest):
    """The stream's answer pieces, in order, and its result."""
    generation = provider.stream(request, request.messages)
    pieces = []
    while True:
        try:
            pieces += [text for kind, text in next(generation) if kind == "answer"]
        except StopIteration as end:
            return pieces, end.value


def test_same_conversation_gives_the_same_answer():
    assert compose(ask("How do tides work?")) == compose(ask("How do tides work?"))


def test_answer_depends_on_the_whole_conversation():
    first = compose(ask("Tell me about volcanoes"))
    second = compose(ask("Tell me about volcanoes", first, "Tell me about volcanoes"))
    assert first != second
    assert "turn 2" in second


def test_answer_quotes_the_question_and_says_it_is_the_demo():
    answer = compose(ask("Why is the sky blue over Lisbon?"))
    assert "offline demo model" in answer
    assert "Why is the sky blue over Lisbon?" in answer
    assert "lisbon" in answer.lower()


def test_table_and_code_block_when_asked():
    plain = compose(ask("Tell me about bread"))
    assert "|---" not in plain
    assert "```" not in plain
    assert "|---|---:|---|" in compose(ask("Make a table of bread types"))
    code = compose(ask("Show python code for sorting"))
    assert code.count("```") == 2


def test_steps_are_a_numbered_list():
    answer = compose(ask("How do I repot a plant, step by step?"))
    assert "\n1. " in answer and "\n3. " in answer


def test_tokens_rejoin_to_the_text():
    text = compose(ask("Explain caching with a table and code"))
    pieces = split_tokens(text)
    assert "".join(pieces) == text
    assert all(piece for piece in pieces)


def test_max_tokens_cuts_with_finish_length():
    request = ChatRequest(
        id="a", messages=ask("hello"), model="demo", params={"max_tokens": 4}
    )
    pieces, result = run(DemoProvider(0, 0), request)
    assert len(pieces) == 4
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens > 0


def test_stream_is_paced_by_ttft_and_rate():
    request = ChatRequest(
        id="a", messages=ask("hi"), model="demo", params={"max_tokens": 11}
    )
    generation = DemoProvider(0.2, 50).stream(request, request.messages)
    started = time.monotonic()
    arrivals: list[float] = []  # when each token reached the caller
    pieces: list[str] = []
    while True:
        try:
            batch = next(generation)
        except StopIteration as end:
            result = end.value
            break
        arrivals += [time.monotonic()] * len(batch)
        pieces += [text for _, text in batch]
    # Token k is never early: not before 200 ms, then 20 ms after the one before it
    # (1 ms of float rounding aside). A busy machine can only make tokens later.
    for k, arrived in enumerate(arrivals):
        assert arrived - started >= 0.2 + k * 0.02 - 0.001, (k, arrived - started)
    assert "".join(pieces) == "".join(split_tokens(compose(request.messages))[:11])
    assert result.finish_reason == "length"


def test_a_late_read_gets_every_token_due_in_one_batch():
    request = ChatRequest(id="a", messages=ask("hello there"), model="demo")
    generation = DemoProvider(0, 100).stream(request, request.messages)
    first = next(generation)
    # Stall the consumer for ten token intervals, as a pacing relay does: the sleep
    # makes the condition under test (a machine that is busier only stalls longer).
    time.sleep(0.1)
    caught_up = next(generation)
    tokens = split_tokens(compose(request.messages))
    assert first == [("answer", tokens[0])]
    assert [text for _, text in caught_up] == tokens[1 : 1 + len(caught_up)]
    assert len(caught_up) > 1
