"""Clients that misbehave on purpose, and what the tests read of the relay while
they do: raw TCP and WebSocket connections from a loopback address of their own, a
long-polling handshake, the relay's metrics and its worker process, and the
server-sent events of an HTTP stream as they arrive."""

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import requests

from bench.procstat import children

from .conftest import Recorder, Relay, wait_until

# -- clients from an address of their own ----------------------------------------------


def bound_socket(url: str, address: str, **options: int) -> socket.socket:
    """A TCP connection to ``url`` from ``address``; ``options`` are socket options
    set before connecting (``rcvbuf``, ``maxseg``)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if "rcvbuf" in options:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, options["rcvbuf"])
    if "maxseg" in options:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, options["maxseg"])
    sock.settimeout(10)
    sock.bind((address, 0))
    sock.connect((host, int(port)))
    return sock


def sio_from(url: str, address: str, **connect: Any) -> Recorder:
    """A recording Socket.IO client (WebSocket only) connected from ``address``."""
    return Recorder(
        url,
        client_options={
            "websocket_extra_options": {"socket": bound_socket(url, address)}
        },
        transports=["websocket"],
        **connect,
    )


class Polling:
    """One long-polling Engine.IO handshake from ``address``: its HTTP status,
    ``Retry-After`` and refusal body, and the session it opened (ended by
    ``close``)."""

    def __init__(self, url: str, address: str):
        self.url = url
        self.address = address
        response, body = self._request("GET", "/socket.io/?EIO=4&transport=polling")
        self.status = response.status
        self.retry_after = response.getheader("Retry-After")
        # An OPEN packet ("0{...}") when accepted, the refusal's JSON otherwise.
        self.sid = json.loads(body[1:])["sid"] if self.status == 200 else None
        self.body = json.loads(body) if self.status != 200 else None

    def _request(self, method: str, path: str, body: bytes | None = None):
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(
            host, int(port), timeout=10, source_address=(self.address, 0)
        )
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response, response.read().decode()
        finally:
            conn.close()

    def close(self) -> None:
        """End the session (Engine.IO's CLOSE packet), as a leaving client does."""
        if self.sid is not None:
            path = f"/socket.io/?EIO=4&transport=polling&sid={self.sid}"
            assert self._request("POST", path, b"1")[0].status == 200
            self.sid = None


def metric(server: Relay, name: str, labels: str = "") -> float:
    """A sample of the relay's /metrics (0 when it has none yet)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    found = re.search(rf"^{pattern}$", text, re.M)
    return float(found.group(1)) if found else 0.0


def sessions(server: Relay) -> int:
    return int(metric(server, "chat_engineio_sessions"))


def wait_sessions(server: Relay, count: int) -> None:
    """Wait until the relay holds ``count`` Engine.IO sessions: a client's leaving
    reaches it a moment after the client is done with it."""
    wait_until(
        lambda: sessions(server) == count,
        what=f"{count} open sessions (now {sessions(server)})",
    )


def refusals(server: Relay, code: str) -> float:
    return metric(server, "chat_connections_refused_total", f'code="{code}"')


def healthz(url: str) -> int:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        return response.status


# WebSocket opcodes (RFC 6455, 5.2).
CONTINUATION, TEXT, CLOSE = 0x0, 0x1, 0x8


def raw_request(
    url: str, address: str, head: str, body: list[bytes] | None = None
) -> tuple[int, bytes]:
    """An HTTP request written by hand from ``address``: ``head`` is its request line
    and headers (the Host header is added), ``body`` what follows them, in pieces.
    Returns the response's status and body; the server may answer before it has
    read the body, which is then never sent."""
    sock = bound_socket(url, address)
    try:
        host = url.removeprefix("http://")
        sock.sendall(f"{head}\r\nHost: {host}\r\n\r\n".encode())
        for piece in body or []:
            try:
                sock.sendall(piece)
            except OSError:
                break  # answered and closed before all of it
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
        head_bytes, _, rest = response.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head_bytes)
        while length and len(rest) < int(length.group(1)):
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        return int(head_bytes.split()[1]), rest
    finally:
        sock.close()


class RawSocketIO:
    """A Socket.IO client over a raw WebSocket, written by hand so that it can stop
    reading: with a small receive buffer and segment size the kernel holds little for
    it, and what the server cannot send waits in the server's own buffer. With
    ``read_rate`` it reads at most that many bytes a second, as over a slow link."""

    def __init__(
        self,
        url: str,
        address: str,
        connect: bool = True,
        read_rate: int | None = None,
        **options: int,
    ):
        self.sock = bound_socket(url, address, **options)
        self.read_rate = read_rate
        self._read_bytes = 0
        self._reading_since = time.monotonic()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {url.removeprefix('http://')}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        self.close_code: int | None = None
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.packets: list[str] = []
        self.next_packet()  # Engine.IO's OPEN
        if connect:
            self.send("40")
            assert self.next_packet().startswith("40")

    def send(self, text: str) -> None:
        """A client's (masked) text frame."""
        self.send_frame(TEXT, text.encode())

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """A client's (masked) frame of any kind: ``fin=False`` starts or goes on
        with a fragmented message, whose next frames are ``CONTINUATION``."""
        mask = os.urandom(4)
        size = len(payload)
        header = bytes(((0x80 if fin else 0) | opcode,)) + (
            bytes((0x80 | size,))
            if size < 126
            else b"\xfe" + size.to_bytes(2, "big")
            if size < 65536
            else b"\xff" + size.to_bytes(8, "big")
        )
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
            size, "big"
        )
        self.sock.sendall(header + mask + masked)

    def next_packet(self) -> str:
        while True:
            packet = self._parse()
            if packet is not None:
                self.packets.append(packet)
                return packet
            data = self.sock.recv(4096 if self.read_rate else 65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buffer += data
            if self.read_rate:
                # The link's pace: what came so far may not have come sooner.
                self._read_bytes += len(data)
                due = self._reading_since + self._read_bytes / self.read_rate
                time.sleep(max(0.0, due - time.monotonic()))

    def drain(self) -> None:
        """Read what is left, to the end of the connection; a frame cut off by the
        close is not a packet."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                break
            self.buffer += data
        while (packet := self._parse()) is not None:
            self.packets.append(packet)

    def _parse(self) -> str | None:
        """The next text frame's payload; the first close frame's code goes to
        ``close_code``."""
        while True:
            data = self.buffer
            if len(data) < 2:
                return None
            size, start = data[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(data[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(data[2:10], "big"), 10
            if len(data) < start + size:
                return None
            self.buffer = data[start + size :]
            payload = data[start : start + size]
            if data[0] & 0x0F != CLOSE:
                return payload.decode()
            if self.close_code is None and payload:
                self.close_code = int.from_bytes(payload[:2], "big")

    def closed_with(self) -> int | None:
        """Read to the end of the connection: the code of the server's close frame,
        None when it sent none."""
        with contextlib.suppress(OSError):  # a reset, or no end in time
            self.drain()
        return self.close_code

    def events(self, name: str) -> list[dict]:
        prefix = f'42["{name}",'
        return [json.loads(p[2:])[1] for p in self.packets if p.startswith(prefix)]


def worker_pid(server: Relay) -> int:
    (worker,) = children(server.process.proc.pid)
    return worker


def sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """A streamed response's server-sent events as they come: ``{"id"?, "data"}``
    each, ``data`` parsed unless ``[DONE]``."""
    buffer = b""
    for piece in response.iter_content(chunk_size=None):
        buffer += piece
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event = sse_event(block)
            if event is not None:
                yield event


def sse_event(block: bytes) -> dict[str, Any] | None:
    """One server-sent event (its lines, without the blank line that ends it):
    ``{"id"?, "data"}``, ``data`` parsed unless ``[DONE]``; None for a comment."""
    event: dict[str, Any] = {}
    for line in block.decode().splitlines():
        name, _, value = line.partition(": ")
        if name == "id":
            event["id"] = int(value)
        elif name == "data":
            event["data"] = value if value == "[DONE]" else json.loads(value)
    return event if "data" in event else None
