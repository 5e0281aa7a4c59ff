"""Several nodes behind nginx, sharing Redis: answers reach their own clients through
the proxy, resume and stop work from any node, a dead node is reported, and a Redis
restart heals by itself."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from itsdangerous import URLSafeSerializer

from .conftest import (
    ROOT,
    SYSTEM_PROMPT,
    PostgresServer,
    Recorder,
    Relay,
    ServerProcess,
    free_port,
    relay_env,
    wait_until,
)
from .conftest import upstream_text as expected_text
from .test_http_api import answer_text, resume_rest
from .test_http_api import start_and_cut as start_http_and_cut


def binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/test.sh installs it", False)
    return path


class RedisServer:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.process: ServerProcess | None = None
        self.start()

    def start(self) -> None:
        self.process = ServerProcess(
            [binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            {},
            self.tmp / f"redis-{self.port}-{time.monotonic_ns()}.log",
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        assert self.process is not None
        self.process.stop()


@pytest.fixture(scope="module")
def redis_server(async_mode, tmp_session):
    """A Redis server on a loopback port, with no persistence: one for each async
    mode's nodes."""
    server = RedisServer(tmp_session)
    yield server
    server.stop()


# Every node signs anonymous owners' cookies alike.
OWNER_SECRET = "cluster-owner-secret"


@pytest.fixture(scope="module")
def cluster_database(async_mode, tmp_session):
    """A PostgreSQL server holding the nodes' conversations: one for each async
    mode's nodes."""
    server = PostgresServer(tmp_session)
    yield server
    server.close()


def node(
    tmp, upstream, redis_server, name: str, async_mode: str, database_url: str = ""
) -> Relay:
    history = {"DATABASE_URL": database_url} if database_url else {}
    return Relay(
        tmp,
        async_mode,
        relay_env(
            upstream,
            SOCKETIO_MESSAGE_QUEUE=redis_server.url,
            NODE_ID=name,
            RESUME_GRACE_SECONDS="10",
            OWNER_SECRET=OWNER_SECRET,
            **history,
        ),
    )


@pytest.fixture(scope="module")
def nodes(async_mode, tmp_session, upstream, redis_server, cluster_database):
    """Three relay nodes sharing the Redis server and the PostgreSQL one."""
    started = [
        node(tmp_session, upstream, redis_server, n, async_mode, cluster_database.url)
        for n in "abc"
    ]
    yield started
    for server in started:
        server.process.proc.send_signal(signal.SIGQUIT)  # together, and no drain
    for server in started:
        server.quit()


@pytest.fixture(scope="module")
def nginx(tmp_session, nodes):
    """nginx on a loopback port with deploy/nginx.conf in front of the nodes."""
    port = free_port()
    prefix = tmp_session / f"nginx-{port}"
    prefix.mkdir()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = re.sub(r"\n\s*server 127\.0\.0\.1:\d+;", "", site)
    servers = "".join(f"\n    server 127.0.0.1:{n.port};" for n in nodes)
    site = site.replace("consistent;", "consistent;" + servers)
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (prefix / "site.conf").write_text(site)
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; {temp} include {prefix}/site.conf; }}\n"
    )
    process = ServerProcess(
        [binary("nginx"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        {},
        prefix / "stdout.log",
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(url + "/healthz")
    yield url
    process.stop()


def from_address(url: str, address: str) -> Recorder:
    """A WebSocket client whose connection comes from ``address`` (127.x.y.z)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection(
        (host, int(port)), timeout=10, source_address=(address, 0)
    )
    return Recorder(
        url,
        client_options={"websocket_extra_options": {"socket": sock}},
        transports=["websocket"],
    )


def test_thirty_clients_through_nginx_each_get_their_own_answer(nginx, nodes):
    clients = [
        from_address(nginx, f"127.0.{n // 200}.{n % 200 + 2}") for n in range(30)
    ]
    try:
        per_node = [node.health()["connections"] for node in nodes]
        assert sum(per_node) == 30
        assert sum(1 for count in per_node if count) >= 2
        prompts = [f"Through the proxy {n} about item-{n}" for n in range(30)]
        start = threading.Barrier(len(clients))

        def ask(n: int) -> None:
            start.wait()
            assert clients[n].chat(f"p{n}", prompts[n])["ok"]

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for n, client in enumerate(clients):
            assert client.wait_end(f"p{n}")[0] == "done"
            assert {data["id"] for _, data in client.events} == {f"p{n}"}
            seqs = [chunk["seq"] for chunk in client.chunks(f"p{n}")]
            assert seqs == list(range(len(seqs)))
            assert client.text(f"p{n}") == expected_text(prompts[n])
    finally:
        for client in clients:
            client.close()


def start_and_cut(url: str, request_id: str, prompt: str, after_chunks: int):
    client = Recorder(url, transports=["websocket"])
    token = client.chat(request_id, prompt)["resume_token"]
    client.wait(lambda c: len(c.chunks(request_id)) >= after_chunks)
    client.cut()
    # What the connection received is a prefix of the stream; its handlers, each on
    # a thread of its own, may still be recording the last ones.
    client.wait(lambda c: contiguous(c.chunks(request_id)))
    return token, client.chunks(request_id)


def contiguous(chunks: list[dict]) -> bool:
    return [c["seq"] for c in chunks] == list(range(len(chunks)))


def wait_mirrored_end(redis_server: RedisServer, token: str) -> None:
    """Wait until Redis holds the stream's terminal event (its owner mirrors it in
    a batch, every 50 ms)."""
    from app.cluster import ClusterStreamStore

    store = ClusterStreamStore(redis_server.url, "observer", grace=5)

    def ended() -> bool:
        mirror = store.mirrored(token)
        return mirror is not None and mirror.terminal is not None

    wait_until(ended, what="the mirrored terminal event")


def owner_cookie(owner_id: str) -> dict[str, str]:
    """A fresh Cookie header (the Engine.IO client takes the cookie out of the dict
    it is given)."""
    value = URLSafeSerializer(OWNER_SECRET, salt="chatstream.owner").dumps(owner_id)
    return {"Cookie": f"chatstream_owner={value}"}


def test_a_conversation_goes_on_at_any_node(nodes, upstream):
    a, b, c = nodes
    roamer = f"roamer-{time.monotonic_ns()}"
    first = Recorder(a.url, headers=owner_cookie(roamer))
    other_tab = Recorder(c.url, headers=owner_cookie(roamer))
    try:
        question = f"Where do eels spawn? {time.monotonic_ns()}"
        ack = first.chat("c1", question)
        assert first.wait_end("c1")[0] == "done"
        answer = first.text("c1")
        # The owner's tab on another node hears of the new conversation.
        other_tab.wait(lambda r: r.notices)
        assert other_tab.notices[0][1]["id"] == ack["conversation_id"]
    finally:
        first.close()
    second = Recorder(b.url, headers=owner_cookie(roamer))
    try:
        follow_up = f"And why there? {time.monotonic_ns()}"
        ack2 = second.chat("c2", follow_up, conversation_id=ack["conversation_id"])
        assert ack2["ok"], ack2
        assert second.wait_end("c2")[0] == "done"
        sent = [
            r["body"]["messages"]
            for r in upstream.requests()
            if follow_up in (r["prompt"] or "")
        ]
        assert sent == [
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": follow_up},
            ]
        ]
    finally:
        second.close()
        other_tab.close()


def test_resume_on_another_node_gives_the_exact_answer(nodes):
    a, b, _ = nodes
    prompt = "Resume elsewhere [[tokens:120]] [[tps:60]]"
    token, held = start_and_cut(a.url, "r", prompt, after_chunks=5)
    other = Recorder(b.url)
    try:
        after = held[-1]["seq"]
        ack = other.call("resume", {"id": "r", "token": token, "after": after})
        assert ack["ok"] is True
        assert other.wait_end("r")[0] == "done"
        resumed = other.chunks("r")
        seqs = [c["seq"] for c in resumed]
        assert seqs == list(range(after + 1, after + 1 + len(seqs)))
        text = "".join(c["delta"] for c in held + resumed)
        assert text == expected_text(prompt, 120)
    finally:
        other.close()


def test_resume_of_a_finished_answer_on_another_node(
    nodes, upstream, redis_server, async_mode
):
    a, _, c = nodes
    marker = f"Finished elsewhere {async_mode}"
    prompt = f"{marker} [[tokens:40]] [[tps:100]]"
    token, held = start_and_cut(a.url, "f", prompt, after_chunks=3)
    assert upstream.wait_outcome(marker)["outcome"] == "completed"
    wait_mirrored_end(redis_server, token)
    other = Recorder(c.url)
    try:
        ack = other.call(
            "resume", {"id": "f", "token": token, "after": held[-1]["seq"]}
        )
        assert ack["ok"] is True
        assert other.wait_end("f")[0] == "done"
        text = "".join(ch["delta"] for ch in held + other.chunks("f"))
        assert text == expected_text(prompt, 40)
    finally:
        other.close()


def test_wrong_token_on_another_node_is_refused(nodes):
    a, b, _ = nodes
    token, held = start_and_cut(a.url, "w", "Guarded [[tokens:60]] [[tps:60]]", 2)
    other = Recorder(b.url)
    try:
        bad = {"id": "w", "token": token[:-3] + "abc", "after": 1}
        assert other.call("resume", bad)["error"]["code"] == "resume_denied"
        # Its own answer comes after anything of the stream sent its way.
        assert other.chat("own", "Mine [[tokens:3]]")["ok"]
        assert other.wait_end("own")[0] == "done"
        taken = [name for name, data in other.events if data.get("id") != "own"]
        assert taken == ["error"]
    finally:
        other.close()


def test_stop_via_another_node_stops_the_stream(nodes, upstream, async_mode):
    a, b, _ = nodes
    # 50 s of answer, resumed by a client that stays connected: only the stop can
    # end its upstream stream within the test.
    marker = f"Stop me elsewhere {async_mode}"
    prompt = f"{marker} [[tokens:2000]] [[tps:40]]"
    token, held = start_and_cut(a.url, "s", prompt, after_chunks=3)
    other = Recorder(b.url)
    try:
        ack = other.call(
            "resume", {"id": "s", "token": token, "after": held[-1]["seq"]}
        )
        assert ack["ok"]
        other.wait(lambda c: len(c.chunks("s")) >= 3)
        assert other.call("stop", {"id": "s"}) == {"ok": True, "id": "s"}
        name, done = other.wait_end("s")
        assert name == "done"
        assert done["finish_reason"] == "cancelled"
        record = upstream.wait_outcome(marker, timeout=30)
        assert record["outcome"] == "client_closed"
        assert record["chunks_sent"] < 2000
    finally:
        other.close()


def test_curl_through_nginx_gets_the_stream_as_it_comes(nginx, upstream, async_mode):
    marker = f"curl through nginx {async_mode}"
    prompt = f"{marker} [[tokens:400]] [[tps:40]]"
    body = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    curl = subprocess.Popen(
        [binary("curl"), "--no-buffer", "-sS", nginx + "/v1/chat/completions"]
        + ["-H", "Content-Type: application/json", "-d", json.dumps(body)],
        stdout=subprocess.PIPE,
    )
    try:
        assert curl.stdout is not None
        lines = iter(curl.stdout.readline, b"")
        first = next(line for line in lines if line.startswith(b"data: "))
        # The first chunk came through the proxy while the model had 10 s left.
        assert upstream.find(marker)["outcome"] == "streaming"
        chunk = json.loads(first.removeprefix(b"data: "))
        assert chunk["choices"][0]["delta"]["content"] == expected_text(
            prompt, 400, first=1
        )
    finally:
        curl.kill()
        curl.wait()


def test_http_resume_on_another_node_gives_the_exact_rest(nodes):
    a, b, _ = nodes
    prompt = "HTTP resume elsewhere [[tokens:80]] [[tps:60]]"
    held, stream_id, token = start_http_and_cut(a.url, prompt, events=5)
    rest = resume_rest(b.url, stream_id, token, held)
    assert answer_text(held + rest) == expected_text(prompt, 80)
    assert {e["data"]["model"] for e in rest[:-1]} == {"test-model"}
    assert rest[-1]["data"] == "[DONE]"


def test_dead_node_gives_its_clients_a_retryable_error(
    async_mode, tmp_session, upstream, redis_server, nodes
):
    doomed = node(tmp_session, upstream, redis_server, "doomed", async_mode)
    b = nodes[1]
    # One client stays on the doomed node, one moved its stream to node b, and one
    # streams from node b itself.
    staying = Recorder(doomed.url, transports=["websocket"])
    token = staying.chat("stay", "Doomed stay [[tokens:600]] [[tps:40]]")[
        "resume_token"
    ]
    moved_token, held = start_and_cut(
        doomed.url, "moved", "Doomed moved [[tokens:600]] [[tps:40]]", 2
    )
    moved = Recorder(b.url)
    moved_ack = moved.call(
        "resume", {"id": "moved", "token": moved_token, "after": held[-1]["seq"]}
    )
    assert moved_ack["ok"]
    bystander = Recorder(b.url)
    assert bystander.chat("safe", "Safe on b [[tokens:120]] [[tps:40]]")["ok"]
    staying.wait(lambda c: len(c.chunks("stay")) >= 3)
    moved.wait(lambda c: len(c.chunks("moved")) >= held[-1]["seq"] + 3)

    master = doomed.process.proc.pid
    worker = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
    os.kill(worker, signal.SIGKILL)
    os.kill(master, signal.SIGKILL)
    doomed.process.proc.wait(5)

    try:
        # The moved client hears of it through its own node.
        name, error = moved.wait_end("moved", timeout=30)
        assert name == "error"
        assert error["code"] == "interrupted"
        assert error["retryable"] is True
        # The staying client lost its connection; it reconnects elsewhere and resumes.
        wait_until(lambda: not staying.sio.connected, what="the dropped connection")
        after = staying.chunks("stay")[-1]["seq"]
        back = Recorder(b.url)
        ack = back.call("resume", {"id": "stay", "token": token, "after": after})
        assert ack["ok"] is True
        name, error = back.wait_end("stay")
        assert (name, error["code"], error["retryable"]) == (
            "error",
            "interrupted",
            True,
        )
        back.close()
        # Node b's own stream never noticed.
        name, done = bystander.wait_end("safe", timeout=30)
        assert name == "done"
        assert bystander.text("safe") == expected_text(
            "Safe on b [[tokens:120]] [[tps:40]]", 120
        )
    finally:
        for client in (moved, bystander):
            client.close()
        doomed.process.stop()


def test_service_recovers_after_redis_restarts(redis_server, nodes, nginx):
    redis_server.stop()
    redis_server.start()
    a, b, _ = nodes
    # New streams work at once on the node a client is connected to…
    client = from_address(nginx, "127.0.9.9")
    try:
        assert client.chat("n", "After the restart")["ok"]
        assert client.wait_end("n")[0] == "done"
        assert client.text("n") == expected_text("After the restart")
    finally:
        client.close()
    # …and resuming across nodes works again once the nodes have resubscribed (the
    # Socket.IO queue retries with backoff; pub/sub loses what is sent meanwhile).
    prompt = "Across again [[tokens:60]] [[tps:60]]"
    deadline = time.monotonic() + 30
    while True:
        token, held = start_and_cut(a.url, "x", prompt, 2)
        other = Recorder(b.url)
        try:
            ack = other.call(
                "resume", {"id": "x", "token": token, "after": held[-1]["seq"]}
            )
            try:
                end = other.wait_end("x", timeout=5)[0] if ack["ok"] else None
            except AssertionError:
                end = None  # chunks lost while a node was resubscribing: again
            text = "".join(c["delta"] for c in held + other.chunks("x"))
        finally:
            other.close()
        if end == "done" and text == expected_text(prompt, 60):
            return
        assert time.monotonic() < deadline, (ack, end, text)
        time.sleep(1)


@pytest.fixture(scope="module")
def lone_redis(tmp_session):
    """A Redis server for the store alone: its test needs no nodes, nor a mode."""
    server = RedisServer(tmp_session)
    yield server
    server.stop()


def test_mirror_rewritten_after_a_failed_flush_has_no_duplicate_chunks(lone_redis):
    from app.chat_request import ChatRequest
    from app.cluster import ClusterStreamStore, _key
    from app.streams import Stream

    store = ClusterStreamStore(lone_redis.url, "mirror-test", grace=5)
    request = ChatRequest("m", [{"role": "user", "content": "hi"}], "demo")
    stream = Stream("sid-m", "addr:127.0.0.1", request, request.messages)
    store.add(stream, 3, 3)
    pieces = [("answer", delta) for delta in "abcde"] + [
        # Pieces that are more than text round-trip too.
        ("tool_call", {"index": 0, "id": "c1", "name": "f", "arguments": '{"é":'}),
        ("answer", "f", [{"token": "f", "logprob": -0.5, "bytes": [102]}]),
        ("refusal", "no"),
    ]
    for piece in pieces[:3]:
        stream.append(piece, 0.0)
    store.flush()
    live = store.redis
    # A flush that fails after Redis took its writes (a dropped reply, or a Redis
    # that kept its data across a restart) is written again whole, not appended.
    stream.append(pieces[3], 0.0)
    store.flush()
    for piece in pieces[4:]:
        stream.append(piece, 0.0)
    store.redis = redis.Redis(port=free_port(), decode_responses=True)
    store.touched(stream)
    store.flush()
    store.redis = live
    store.flush()
    assert store.mirrored_chunks(stream.token, -1) == pieces
    live.delete(_key(stream.token), _key(stream.token) + ":c")
