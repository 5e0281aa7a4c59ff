"""Server-sent events, split from a byte stream many at a time.

The ``openai`` package decodes SSE a line at a time in Python (~10 µs an event, with
its JSON); a relay reading a batch of events per socket read splits them all with a
few bytes operations instead. The framing is the WHATWG one: lines end in CRLF, LF or
CR, a blank line ends an event, ``:`` starts a comment, ``data`` lines join with LF,
and an event cut off by the end of the stream is not dispatched.
"""

from __future__ import annotations

Event = tuple[bytes, bytes]  # (event type, b"" when none; data)


class EventSplitter:
    """Feed it body bytes as they arrive; it returns the events they completed."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[Event]:
        if self._rest:
            data = self._rest + data
        if b"\r" in data:
            # A CR at the very end may be the first half of a CRLF: keep it back.
            held = data.endswith(b"\r")
            if held:
                data = data[:-1]
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                data += b"\r"
        blocks = data.split(b"\n\n")
        self._rest = blocks.pop()
        events: list[Event] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                # The usual shape: one data line.
                events.append((b"", block[6:]))
            elif block:
                event = _parse(block)
                if event is not None:
                    events.append(event)
        return events


def _parse(block: bytes) -> Event | None:
    kind = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            kind = value
    if not data:
        return None
    return kind, b"\n".join(data)
