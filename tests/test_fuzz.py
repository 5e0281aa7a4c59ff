"""Random payloads at every event while other clients stream: the server answers each
as documented, never crashes, and the bystanders' answers arrive intact."""

import json

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Recorder, upstream_text

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Payloads near the valid shape, where the interesting bugs live.
fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=70), json_values),
        "message": st.one_of(st.text(max_size=200), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.sampled_from(["user", "assistant", "system", "x"])
                        | json_values,
                        "content": st.text(max_size=100) | json_values,
                    },
                ),
                max_size=4,
            ),
            json_values,
        ),
        "model": st.sampled_from(["test-model", "other-model", "nope"]) | json_values,
        "options": st.fixed_dictionaries(
            {},
            optional={
                "temperature": st.floats(allow_nan=False) | json_values,
                "max_tokens": st.integers() | json_values,
                "extra": json_values,
            },
        )
        | json_values,
        "token": st.text(max_size=40) | json_values,
        "after": st.integers() | json_values,
    },
)
payloads = st.one_of(fields, json_values)

ERROR_CODES = {"invalid_request", "unknown_id", "resume_denied", "busy"}


@pytest.fixture
def bystanders(relay, connect):
    """Clients streaming long answers while the fuzzing goes on."""
    clients = [connect() for _ in range(3)]
    for n, client in enumerate(clients):
        assert client.chat(f"b{n}", f"bystander {n} [[tokens:300]] [[tps:60]]")["ok"]
    return clients


def test_random_payloads_are_answered_and_harm_nobody(relay, connect, bystanders):
    fuzzer = connect()
    accepted: list[str] = []

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(event=st.sampled_from(["chat", "stop", "resume"]), payload=payloads)
    def send(event, payload):
        ack = fuzzer.call(event, payload, timeout=5)
        assert isinstance(ack, dict)
        if ack["ok"]:
            assert event == "chat"
            accepted.append(ack["id"])
            fuzzer.call("stop", {"id": ack["id"]})
        else:
            assert ack["error"]["code"] in ERROR_CODES
            assert ack["error"]["message"]

    send()
    # Events nobody handles are ignored, and the connection stays usable.
    for name in ("", "connect", "disconnect", "chunk", "done", "x" * 1000):
        fuzzer.sio.emit(name, {"id": 1})
    assert fuzzer.chat("after", "still fine?")["ok"]
    assert fuzzer.wait_end("after")[0] == "done"
    for request_id in accepted:
        assert fuzzer.wait_end(request_id)[0] in ("done", "error")

    for n, client in enumerate(bystanders):
        name, done = client.wait_end(f"b{n}", timeout=30)
        assert name == "done"
        seqs = [chunk["seq"] for chunk in client.chunks(f"b{n}")]
        assert seqs == list(range(len(seqs)))
        prompt = f"bystander {n} [[tokens:300]] [[tps:60]]"
        assert client.text(f"b{n}") == upstream_text(prompt, 300)
        assert {data["id"] for _, data in client.events} == {f"b{n}"}
    assert relay.health()["status"] == "ok"


GARBAGE_FRAMES = [
    "42",
    "42[",
    '42["chat"',
    '42{"id":1}',
    "4x",
    "9",
    "",
    '42["chat",' + "[" * 500 + "]" * 500 + "]",
    # Deeper than the JSON decoder goes.
    '42["chat",{"id":"d","messages":' + "[" * 5000 + "]" * 5000 + "}]",
    '42["chat",{"id":"s","message":"\\ud800"}]',
    "43" + "9" * 40 + "[]",
    '42/nope,["chat",{}]',
    "40/admin,",
    "\x00\xff",
]


@pytest.mark.parametrize("frame", GARBAGE_FRAMES, ids=range(len(GARBAGE_FRAMES)))
def test_malformed_packets_do_not_hurt_the_server(relay, connect, frame):
    bystander = connect()
    assert bystander.chat("b", "keep going [[tokens:30]]")["ok"]
    url = relay.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=5)
    assert ws.recv().startswith("0")
    ws.send("40")
    assert ws.recv().startswith("40")
    ws.send(frame)
    # The server may answer, ignore or close; any of these is fine, a crash is not.
    # A stop sent after the frame is acknowledged once the frame has been dealt
    # with, unless the connection is closed (or no longer in the namespace).
    ws.send('4299["stop",{"id":"probe"}]')
    try:
        while (reply := ws.recv()) and not reply.startswith("4399"):
            if reply == "2":
                ws.send("3")
    except (websocket.WebSocketException, OSError):
        pass
    ws.close()
    assert bystander.wait_end("b")[0] == "done"
    assert relay.health()["status"] == "ok"
    fresh = Recorder(relay.url)
    assert fresh.chat("n", "new connection")["ok"]
    assert fresh.wait_end("n")[0] == "done"
    fresh.close()


def test_deeply_nested_payload_is_rejected(relay, connect):
    client = connect()
    nested = json.loads("[" * 200 + "]" * 200)
    ack = client.call("chat", {"id": "deep", "messages": nested})
    assert ack["error"]["code"] == "invalid_request"
