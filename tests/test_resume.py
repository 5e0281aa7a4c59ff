"""Resume: a client whose transport drops mid-stream loses nothing and gets nothing
twice, and nobody without the request's token can take its stream."""

from .conftest import Recorder, wait_until


def answer_text(client: Recorder, request_id: str, prompt: str) -> str:
    assert client.chat(request_id, prompt)["ok"]
    assert client.wait_end(request_id)[0] == "done"
    return client.text(request_id)


def start_and_cut(client: Recorder, request_id: str, prompt: str, after_chunks: int):
    """Start a stream, cut the transport after some chunks; return (token, held)."""
    token = client.chat(request_id, prompt)["resume_token"]
    client.wait(lambda c: len(c.chunks(request_id)) >= after_chunks)
    client.cut()
    # What the connection received before the cut is a prefix of the stream; its
    # handlers, each on a thread of its own, may still be recording the last ones.
    client.wait(lambda c: contiguous(c.chunks(request_id)))
    return token, client.chunks(request_id)


def contiguous(chunks: list[dict]) -> bool:
    return [c["seq"] for c in chunks] == list(range(len(chunks)))


def test_resume_after_transport_cut_gives_the_exact_answer(relay, connect):
    prompt = f"resume exactly {relay.async_mode} [[tokens:150]] [[tps:100]]"
    expected = answer_text(connect(), "whole", prompt)
    token, held = start_and_cut(
        connect(transports=["websocket"]), "r", prompt, after_chunks=10
    )
    second = connect()
    ack = second.call("resume", {"id": "r", "token": token, "after": held[-1]["seq"]})
    assert ack["ok"] is True
    name, done = second.wait_end("r")
    assert name == "done"
    assert done["finish_reason"] == "stop"
    resumed = second.chunks("r")
    first_new = held[-1]["seq"] + 1
    assert [c["seq"] for c in resumed] == list(
        range(first_new, first_new + len(resumed))
    )
    assert "".join(c["delta"] for c in held + resumed) == expected
    assert [n for n, _ in second.events].count("done") == 1


def test_resume_after_the_answer_ended_replays_the_rest_and_done(relay, connect):
    prompt = f"resume late {relay.async_mode} [[tokens:40]] [[tps:100]]"
    expected = answer_text(connect(), "whole", prompt)
    token, held = start_and_cut(
        connect(transports=["websocket"]), "ended-late", prompt, after_chunks=3
    )
    # Let the generation finish while nobody is connected (the relay logs its end).
    relay.wait_log("request ended-late finished")
    second = connect()
    resume = {"id": "ended-late", "token": token, "after": held[-1]["seq"]}
    ack = second.call("resume", resume)
    assert ack["ok"] is True
    assert second.wait_end("ended-late")[0] == "done"
    # The answer had ended: everything missing came as the replay.
    resumed = second.chunks("ended-late")
    assert ack["replayed"] == len(resumed) == 40 - len(held)
    assert "".join(c["delta"] for c in held + resumed) == expected


def test_resume_from_nothing_replays_everything(relay, connect):
    prompt = f"resume from zero {relay.async_mode} [[tokens:30]]"
    expected = answer_text(connect(), "whole", prompt)
    first = connect(transports=["websocket"])
    token = first.chat("r", prompt)["resume_token"]
    first.cut()
    second = connect()
    assert second.call("resume", {"id": "r", "token": token, "after": -1})["ok"]
    assert second.wait_end("r")[0] == "done"
    assert second.text("r") == expected


def test_resume_with_a_wrong_token_gets_an_error_and_nothing_else(relay, connect):
    owner = connect()
    prompt = f"not yours {relay.async_mode} [[tokens:60]] [[tps:100]]"
    token = owner.chat("r", prompt)["resume_token"]
    thief = connect()
    for payload in (
        {"id": "r", "token": token[:-2] + "xx", "after": -1},
        {"id": "other", "token": token, "after": -1},
    ):
        ack = thief.call("resume", payload)
        assert ack["ok"] is False
        assert ack["error"]["code"] == "resume_denied"
    assert owner.wait_end("r")[0] == "done"
    # The thief's own answer comes after anything of the owner's sent its way.
    assert thief.chat("own", "mine [[tokens:3]]")["ok"]
    assert thief.wait_end("own")[0] == "done"
    taken = [(n, d) for n, d in thief.events if d.get("id") != "own"]
    assert [name for name, _ in taken] == ["error", "error"]
    assert all(data["code"] == "resume_denied" for _, data in taken)


def test_resume_with_a_seq_beyond_what_was_sent_is_rejected(relay, connect):
    client = connect()
    token = client.chat("r", f"too far {relay.async_mode} [[tokens:5]]")["resume_token"]
    client.wait_end("r")
    ack = client.call("resume", {"id": "r", "token": token, "after": 99})
    assert ack["error"]["code"] == "invalid_request"
    assert "after" in ack["error"]["message"]


def test_resume_is_refused_once_the_window_has_passed(relay, connect, upstream):
    prompt = f"too late {relay.async_mode} [[tokens:2000]] [[tps:40]]"
    token, held = start_and_cut(
        connect(transports=["websocket"]), "r", prompt, after_chunks=2
    )
    # The relay fixture's window is 2 s: the upstream stream (50 s of answer) is
    # closed after it.
    record = upstream.wait_outcome(prompt.split(" [[")[0], timeout=30)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 2000
    ack = connect().call("resume", {"id": "r", "token": token, "after": 1})
    assert ack["error"]["code"] == "resume_denied"


def test_a_generation_whose_client_dropped_still_counts_as_live(relay, connect):
    # It runs on, for its client to resume, until the grace window ends: /healthz,
    # the active-streams gauge and the SIGTERM drain must all see it.
    wait_until(lambda: relay.health()["live_streams"] == 0, timeout=30)
    prompt = f"count me live {relay.async_mode} [[tokens:200]] [[tps:50]]"
    start_and_cut(connect(transports=["websocket"]), "away", prompt, after_chunks=2)
    assert relay.health()["live_streams"] == 1
    relay.wait_log("request away abandoned", timeout=30)
    assert relay.health()["live_streams"] == 0
