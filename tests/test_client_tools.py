"""The Python client's tool calls, refusals, images and system message, against a
scripted server in process: what it yields, keeps in its history and sends."""

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest

import client.images
from client import Delta, ToolCallRef, cli
from tests.test_client import ScriptedClient, chats_sent

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PARIS_ARGS = '{"city": "Paris"}'
ROME_ARGS = '{"city": "Rome"}'
CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": PARIS_ARGS},
    },
    {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ROME_ARGS},
    },
]


def fresh(value):
    """A copy, as a payload decoded from the wire is."""
    return json.loads(json.dumps(value))


def call_chunk(seq: int, index: int, arguments: str, **first: str) -> tuple:
    tool_call = {"index": index, **first, "arguments": arguments}
    return ("chunk", {"seq": seq, "kind": "tool_call", "tool_call": tool_call})


def two_calls(request_id: str) -> list[tuple[str, dict]]:
    """A little text, then two calls whose fragments interleave, then the done."""
    return [
        ("chunk", {"seq": 0, "delta": "Let me check."}),
        call_chunk(1, 0, '{"city": ', id="call_1", name="get_weather"),
        call_chunk(2, 1, '{"city": "Rome"}', id="call_2", name="get_weather"),
        call_chunk(3, 0, '"Paris"}'),
        (
            "done",
            {"finish_reason": "tool_calls", "chunks": 4, "tool_calls": fresh(CALLS)},
        ),
    ]


def calls_only(request_id: str) -> list[tuple[str, dict]]:
    return [
        call_chunk(0, 0, PARIS_ARGS, id="call_1", name="get_weather"),
        call_chunk(1, 1, ROME_ARGS, id="call_2", name="get_weather"),
        (
            "done",
            {"finish_reason": "tool_calls", "chunks": 2, "tool_calls": fresh(CALLS)},
        ),
    ]


def final_answer(request_id: str) -> list[tuple[str, dict]]:
    return [
        ("chunk", {"seq": 0, "delta": "Paris 18 C, "}),
        ("chunk", {"seq": 1, "delta": "Rome 21 C."}),
        ("done", {"finish_reason": "stop", "chunks": 2}),
    ]


def refused(request_id: str) -> list[tuple[str, dict]]:
    return [
        ("chunk", {"seq": 0, "delta": "I can't ", "kind": "refusal"}),
        ("chunk", {"seq": 1, "delta": "help with that.", "kind": "refusal"}),
        ("done", {"finish_reason": "stop", "chunks": 2}),
    ]


class _Queued(ScriptedClient):
    """Answers each request with the next of ``queue``: a script, or an error
    (a dict) that refuses it."""

    def __init__(self, queue: list, **kwargs) -> None:
        super().__init__(**kwargs)
        self.queue = queue

    def script(self, request_id: str) -> list[tuple[str, dict]]:
        return self.queue.pop(0)(request_id)

    def _emit(self, event, data, callback) -> None:
        if event == "chat" and isinstance(self.queue[0], dict):
            self.refusal = self.queue.pop(0)
        else:
            self.refusal = None
        super()._emit(event, data, callback)


def scripted(*scripts, **kwargs) -> ScriptedClient:
    """A scripted client answering its requests with ``scripts``, one each."""
    return _Queued(list(scripts), **kwargs)


# What stream() yields


def test_stream_yields_the_text_alone_when_the_model_calls_tools():
    chat = scripted(two_calls)
    assert list(chat.stream("Weather in Paris and Rome?", tools=TOOLS)) == [
        "Let me check."
    ]
    assert chat.last_result["tool_calls"] == CALLS
    assert chat.last_result["finish_reason"] == "tool_calls"


def test_stream_with_reasoning_yields_tool_call_pieces_naming_their_call():
    chat = scripted(two_calls)
    deltas = list(chat.stream("Weather?", tools=TOOLS, reasoning=True))
    weather = "get_weather"
    assert deltas == [
        Delta("answer", "Let me check."),
        Delta("tool_call", '{"city": ', ToolCallRef(0, "call_1", weather)),
        Delta("tool_call", ROME_ARGS, ToolCallRef(1, "call_2", weather)),
        Delta("tool_call", '"Paris"}', ToolCallRef(0, "call_1", weather)),
    ]
    # Every delta unpacks as a pair, as README code does.
    assert [kind for kind, _ in deltas] == ["answer"] + ["tool_call"] * 3


def test_last_result_has_empty_tool_calls_and_refusal_when_there_are_none():
    chat = scripted(final_answer)
    assert chat.ask("Hi") == "Paris 18 C, Rome 21 C."
    assert chat.last_result["tool_calls"] == []
    assert chat.last_result["refusal"] == ""
    assert chat.last_result["reasoning"] == ""


def test_the_dones_tool_calls_join_the_history_when_the_chunks_disagree(caplog):
    def disagreeing(request_id: str) -> list[tuple[str, dict]]:
        events = calls_only(request_id)
        events[1] = call_chunk(1, 1, '{"city": "Roma"}', id="call_2", name="x")
        return events

    chat = scripted(disagreeing)
    chat.ask("Weather?", tools=TOOLS)
    assert chat.last_result["tool_calls"] == CALLS
    assert chat.history[-1]["tool_calls"] == CALLS
    assert "differ" in caplog.text


# The agent loop


def test_a_tool_round_keeps_openai_shaped_messages_and_sends_them_back():
    chat = scripted(calls_only, final_answer)
    assert chat.ask("Weather in Paris and Rome?", tools=TOOLS) == ""
    assert chat.history == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": CALLS},
    ]
    assert chat.pending_tool_calls == CALLS
    # Given in another order: the tool messages follow the calls' order.
    answer = chat.ask(tool_results={"call_2": "21 C", "call_1": "18 C"}, tools=TOOLS)
    assert answer == "Paris 18 C, Rome 21 C."
    loop = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21 C"},
    ]
    assert chat.history == [
        *loop,
        {"role": "assistant", "content": "Paris 18 C, Rome 21 C."},
    ]
    assert chat.pending_tool_calls == []
    first, second = chats_sent(chat)
    assert first["messages"] == loop[:1]
    assert second["messages"] == loop
    assert first["options"] == second["options"] == {"tools": TOOLS}
    # What went out is JSON as the server reads it: no tuples, no objects.
    assert json.loads(json.dumps(second)) == second


def test_text_beside_tool_calls_is_the_assistant_messages_content():
    chat = scripted(two_calls)
    chat.ask("Weather?")
    assert chat.history[-1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": CALLS,
    }


def test_the_history_holds_a_copy_of_the_calls():
    chat = scripted(calls_only)
    chat.ask("Weather?")
    chat.last_result["tool_calls"][0]["function"]["arguments"] = "changed"
    assert chat.history[-1]["tool_calls"] == CALLS


@pytest.mark.parametrize(
    "tool_results, problem",
    [
        ({"call_1": "18 C"}, "no result for 'call_2'"),
        (
            {"call_1": "18 C", "call_2": "21 C", "call_3": "?"},
            "no call waits for 'call_3'",
        ),
        ({"call_1": "18 C", "call_2": {"celsius": 21}}, "must be text"),
        ([("call_1", "18 C"), ("call_2", "21 C")], "must map each call's id"),
    ],
)
def test_tool_results_that_do_not_answer_exactly_the_calls_are_refused(
    tool_results, problem
):
    chat = scripted(calls_only)
    chat.ask("Weather?")
    before = [dict(message) for message in chat.history]
    with pytest.raises(ValueError, match=problem):
        chat.ask(tool_results=tool_results)
    assert chat.history == before
    assert len(chats_sent(chat)) == 1  # nothing went out


def test_tool_results_without_waiting_calls_are_refused():
    chat = scripted(final_answer)
    chat.ask("Hi")
    with pytest.raises(ValueError, match="no tool calls wait for results"):
        chat.ask(tool_results={"call_1": "18 C"})
    with pytest.raises(ValueError, match="no tool calls wait"):
        ScriptedClient().ask(tool_results={})
    assert len(chats_sent(chat)) == 1


def test_a_prompt_while_calls_wait_for_results_is_refused():
    chat = scripted(calls_only, final_answer)
    chat.ask("Weather?")
    with pytest.raises(ValueError, match="'call_1', 'call_2'.*wait for their results"):
        chat.ask("And in Oslo?")
    with pytest.raises(ValueError, match="goes alone"):
        chat.ask("And in Oslo?", tool_results={"call_1": "a", "call_2": "b"})
    with pytest.raises(ValueError, match="a prompt is needed"):
        chat.ask()
    assert len(chats_sent(chat)) == 1
    # Once reset, the conversation starts again.
    chat.reset()
    assert chat.ask("And in Oslo?") == "Paris 18 C, Rome 21 C."


def test_calls_of_a_stopped_answer_stay_out_of_the_history():
    def stopped_in_a_call(request_id: str) -> list[tuple[str, dict]]:
        return [
            ("chunk", {"seq": 0, "delta": "Checking."}),
            call_chunk(1, 0, '{"city": "Pa', id="call_1", name="get_weather"),
            ("done", {"finish_reason": "cancelled", "chunks": 2}),
        ]

    chat = scripted(stopped_in_a_call)
    assert chat.ask("Weather?") == "Checking."
    # What came is in the result; the history holds no call that waits.
    assert chat.last_result["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Pa'},
        }
    ]
    assert chat.history[-1] == {"role": "assistant", "content": "Checking."}
    assert chat.pending_tool_calls == []


def test_tools_and_tool_choice_are_request_options():
    other = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "name": "other"}}]
    chat = scripted(
        final_answer,
        final_answer,
        final_answer,
        tools=TOOLS,
        options={"temperature": 0.2},
    )
    chat.ask("one")
    chat.ask("two", tools=other, options={"tool_choice": "required"})
    chat.reset()
    chat.tools = None
    chat.ask("three", options={"tools": other, "parallel_tool_calls": False})
    assert [sent["options"] for sent in chats_sent(chat)] == [
        {"temperature": 0.2, "tools": TOOLS},
        {"temperature": 0.2, "tools": other, "tool_choice": "required"},
        {"temperature": 0.2, "tools": other, "parallel_tool_calls": False},
    ]


def test_a_resume_in_the_middle_of_a_calls_arguments_gives_the_exact_rest():
    whole = '{"city": "Liège", "days": 3}'
    pieces = ['{"city": "Li', "è", 'ge", "da', 'ys": 3}']
    events = [
        call_chunk(0, 0, pieces[0], id="call_1", name="get_weather"),
        call_chunk(1, 0, pieces[1]),
        call_chunk(2, 0, pieces[2]),
        call_chunk(3, 0, pieces[3]),
        ("done", {"finish_reason": "tool_calls", "chunks": 4}),
    ]

    class Resuming(ScriptedClient):
        # The connection drops after chunk 1, chunk 3 having overtaken chunk 2;
        # the resume replays everything after 1.
        def _emit(self, event, data, callback) -> None:
            super()._emit(event, data, callback)
            if event == "chat":
                request = self._requests[data["id"]]
                drop = {"reason": "transport error", "final": False}
                self._dispatch("disconnected", drop, request)
                self._on_connect()
            elif event == "resume":
                callback({"ok": True, "id": data["id"], "replayed": 3})
                for name, payload in events[2:]:
                    self._dispatch(name, {"id": data["id"], **payload})

    chat = Resuming()
    chat.script = lambda request_id: [events[0], events[1], events[3]]
    deltas = list(chat.stream("Weather in Liège?", reasoning=True))
    assert [delta.text for delta in deltas] == pieces
    [resume] = [data for event, data in chat.sent if event == "resume"]
    assert resume["after"] == 1
    [call] = chat.last_result["tool_calls"]
    assert call["function"]["arguments"] == whole
    assert chat.pending_tool_calls == [call]


# Refusals


def test_a_refusal_is_yielded_as_the_answer_and_kept_in_the_result():
    chat = scripted(refused, refused)
    assert list(chat.stream("Do something bad")) == ["I can't ", "help with that."]
    assert chat.last_result["refusal"] == "I can't help with that."
    deltas = list(chat.stream("Again", reasoning=True))
    assert deltas == [
        Delta("refusal", "I can't "),
        Delta("refusal", "help with that."),
    ]
    # The history holds the conversation as the user saw it.
    assert chat.history[1] == {
        "role": "assistant",
        "content": "I can't help with that.",
    }


# Images


def tiny_png(path: Path) -> bytes:
    """Write a 1x1 PNG to ``path``; returns its bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return png


def test_images_are_sent_as_data_urls_and_web_urls_and_kept(tmp_path):
    png = tiny_png(tmp_path / "dot.png")
    web = "https://example.com/cat.jpg"
    chat = scripted(final_answer, final_answer)
    chat.ask("What is this?", images=[tmp_path / "dot.png", web])
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "image_url", "image_url": {"url": web}},
        ],
    }
    assert chat.history[0] == turn
    chat.ask("And the colour?")
    first, second = chats_sent(chat)
    assert first["messages"] == [turn]
    # Sent again with the history, as OpenAI's API needs.
    assert second["messages"][0] == turn
    assert second["messages"][2] == {"role": "user", "content": "And the colour?"}


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("notes.txt", b"hello", "is not an image file"),
        ("noext", b"\x89PNG", "is not an image file"),
        ("missing.png", None, "cannot read"),
        ("big.png", b"\x89PNG" + b"\x00" * 2048, "larger than"),
    ],
)
def test_a_bad_image_is_refused_before_anything_is_sent(
    tmp_path, monkeypatch, name, content, problem
):
    monkeypatch.setattr(client.images, "MAX_IMAGE_BYTES", 1024)
    if content is not None:
        (tmp_path / name).write_bytes(content)
    chat = scripted(final_answer)
    with pytest.raises(ValueError, match=problem):
        chat.ask("Look", images=[str(tmp_path / name)])
    assert chats_sent(chat) == []
    assert chat.history == []


def test_an_image_at_the_size_limit_is_sent(tmp_path, monkeypatch):
    monkeypatch.setattr(client.images, "MAX_IMAGE_BYTES", 1024)
    (tmp_path / "edge.png").write_bytes(b"\x89PNG" + b"\x00" * 1020)
    chat = scripted(final_answer)
    chat.ask("Look", images=[tmp_path / "edge.png"])
    [sent] = chats_sent(chat)
    url = sent["messages"][0]["content"][1]["image_url"]["url"]
    assert len(base64.b64decode(url.removeprefix("data:image/png;base64,"))) == 1024


def test_a_data_url_that_is_no_image_is_refused():
    with pytest.raises(ValueError, match="data: URL of an image"):
        scripted(final_answer).ask("Look", images=["data:text/plain;base64,aGk="])


# System message


def test_the_system_message_goes_first_and_stays_out_of_the_history():
    chat = scripted(final_answer, final_answer, system="Answer in French.")
    chat.ask("Hi")
    chat.reset()
    chat.ask("Hello")
    system = {"role": "system", "content": "Answer in French."}
    assert [sent["messages"] for sent in chats_sent(chat)] == [
        [system, {"role": "user", "content": "Hi"}],
        [system, {"role": "user", "content": "Hello"}],
    ]
    assert chat.history[0] == {"role": "user", "content": "Hello"}


# The command line


@pytest.fixture
def tool_cli(monkeypatch):
    """``python -m client`` in this process, its server scripted: ``run(scripts,
    *args)`` returns the exit status and the client it used."""
    made: list[ScriptedClient] = []

    def run(scripts, *args: str, stdin: str | None = None):
        def make(*a, **kw) -> ScriptedClient:
            chat = scripted(*scripts, **kw)
            made.append(chat)
            return chat

        monkeypatch.setattr(cli, "ChatClient", make)
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", _Lines(stdin))
        status = cli.main(["--url", "http://127.0.0.1:9", *args])
        return status, made[-1] if made else None

    return run


class _Lines:
    """A stdin that is not a terminal."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""

    def read(self) -> str:
        text, self.lines = "".join(self.lines), []
        return text


def test_cli_notes_each_tool_call_on_stderr_once_complete(tool_cli, capsys):
    status, _ = tool_cli([two_calls], "Weather?")
    assert status == 0
    out, err = capsys.readouterr()
    assert out == "Let me check.\n"  # the arguments never reach stdout
    assert err == (
        '[tool call get_weather({"city": "Paris"})]\n'
        '[tool call get_weather({"city": "Rome"})]\n'
    )


def test_cli_prints_no_empty_line_for_an_answer_of_tool_calls_alone(tool_cli, capsys):
    assert tool_cli([calls_only], "Weather?")[0] == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("[tool call get_weather(") == 2


def test_cli_json_prints_tool_call_chunks_as_sent(tool_cli, capsys):
    assert tool_cli([two_calls], "--json", "Weather?")[0] == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["event"] for event in events] == ["ack"] + ["chunk"] * 4 + ["done"]
    assert events[2]["data"]["tool_call"] == {
        "index": 0,
        "id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": ',
    }
    assert events[2]["data"]["kind"] == "tool_call"
    assert events[-1]["data"]["tool_calls"] == CALLS


def test_cli_prints_a_refusal_as_the_answer(tool_cli, capsys):
    assert tool_cli([refused], "Do something bad")[0] == 0
    assert capsys.readouterr().out == "I can't help with that.\n"


def test_cli_interactive_refuses_a_prompt_after_tool_calls(tool_cli, capsys):
    status, chat = tool_cli(
        [calls_only, final_answer], "-i", stdin="Weather?\nAnd Oslo?\n/reset\nHi\n"
    )
    assert status == 0
    out, err = capsys.readouterr()
    assert "does not run; /reset starts a new conversation" in err
    assert out == "Paris 18 C, Rome 21 C.\n"  # the answer after the reset
    assert [sent["messages"][-1]["content"] for sent in chats_sent(chat)] == [
        "Weather?",
        "Hi",
    ]


def test_cli_attaches_images_to_the_prompt_and_sends_the_system_message(
    tool_cli, tmp_path
):
    png = tiny_png(tmp_path / "dot.png")
    web = "https://example.com/cat.jpg"
    args = ["--system", "Be brief.", "--image", str(tmp_path / "dot.png")]
    status, chat = tool_cli([final_answer], *args, "--image", web, "What", "is it?")
    assert status == 0
    [sent] = chats_sent(chat)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "image_url", "image_url": {"url": web}},
            ],
        },
    ]


def test_cli_images_go_with_the_first_prompt_typed(tool_cli, tmp_path):
    tiny_png(tmp_path / "dot.png")
    status, chat = tool_cli(
        [final_answer, final_answer],
        "-i",
        "--image",
        str(tmp_path / "dot.png"),
        stdin="What is it?\nThanks\n",
    )
    assert status == 0
    first, second = chats_sent(chat)
    assert first["messages"][0]["content"][1]["type"] == "image_url"
    assert second["messages"][-1] == {"role": "user", "content": "Thanks"}


def test_cli_keeps_the_images_for_the_next_prompt_when_one_fails(
    tool_cli, tmp_path, capsys
):
    tiny_png(tmp_path / "dot.png")
    busy = {"code": "busy", "message": "too many", "retryable": True}
    status, chat = tool_cli(
        [busy, final_answer],
        "-i",
        "--image",
        str(tmp_path / "dot.png"),
        stdin="What is it?\nWhat is it, then?\n",
    )
    assert status == 0
    assert "error: busy: too many" in capsys.readouterr().err
    first, second = chats_sent(chat)
    assert second["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it, then?"},
                first["messages"][0]["content"][1],
            ],
        }
    ]
    assert second["messages"][0]["content"][1]["type"] == "image_url"


def test_cli_bad_image_is_a_usage_error(tool_cli, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SystemExit) as caught:
        tool_cli([final_answer], "--image", str(tmp_path / "notes.txt"), "Look")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--image: " in err and "is not an image file" in err
