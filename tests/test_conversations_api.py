"""The conversations' REST API (``/api/conversations``, ``/api/blobs``) against real
servers: conversations made by Socket.IO chats are listed, read with every branch,
searched, renamed, exported, imported and deleted; two owners (tokens, or anonymous
browsers' cookies) never see each other's; pages follow their cursor; a restart
keeps everything; a store that fails answers 503 ``history_unavailable``; PostgreSQL
serves the same API."""

import base64
import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from itsdangerous import URLSafeSerializer

from .conftest import (
    DEFAULT_ASYNC_MODE,
    PostgresServer,
    Recorder,
    Relay,
    relay_env,
    upstream_text,
    wait_until,
)

COOKIE = "chatstream_owner"
ORIGIN = "https://app.example"
PNG_BYTES = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
PNG = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
SVG_BYTES = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
SVG = "data:image/svg+xml;base64," + base64.b64encode(SVG_BYTES).decode()
CONVERSATION_FIELDS = {"id", "title", "model", "created_at", "updated_at"}
SUMMARY_FIELDS = CONVERSATION_FIELDS | {"current_leaf_id"}
MESSAGE_FIELDS = {
    "id",
    "parent_id",
    "role",
    "content",
    "reasoning",
    "tool_calls",
    "tool_call_id",
    "finish_reason",
    "usage",
    "timing",
    "model",
    "error",
    "created_at",
}


def fresh() -> str:
    return secrets.token_hex(5)


class Owner:
    """One owner as the API and Socket.IO know it: a static token, or an anonymous
    browser's cookie (the value the server set)."""

    def __init__(
        self, relay: Relay, *, token: str | None = None, cookie: str | None = None
    ):
        self.relay = relay
        self.token = token
        self.cookie = cookie

    @classmethod
    def browser(cls, relay: Relay) -> "Owner":
        """A new anonymous browser: its first request gets it a cookie."""
        response = requests.get(relay.url + "/api/conversations", timeout=30)
        assert response.status_code == 200
        assert response.json() == {"data": [], "next_cursor": None}
        return cls(relay, cookie=response.cookies[COOKIE])

    @property
    def headers(self) -> dict[str, str]:
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token}"}
        return {"Cookie": f"{COOKIE}={self.cookie}"} if self.cookie else {}

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(
            method, self.relay.url + path, headers=headers, timeout=30, **kwargs
        )

    def listing(self, **params: Any) -> dict[str, Any]:
        response = self.api("GET", "/api/conversations", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def ids(self, **params: Any) -> list[str]:
        return [c["id"] for c in self.listing(**params)["data"]]

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/conversations/{conversation_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def socket(self) -> Recorder:
        if self.token is not None:
            return Recorder(self.relay.url, auth={"token": self.token})
        return Recorder(self.relay.url, headers=self.headers)


@pytest.fixture
def sockets() -> Iterator[Callable[[Owner], Recorder]]:
    """Opens an owner's Socket.IO connections and closes them after the test."""
    opened: list[Recorder] = []

    def open_socket(owner: Owner) -> Recorder:
        client = owner.socket()
        opened.append(client)
        return client

    yield open_socket
    for client in opened:
        client.close()


def chat(client: Recorder, request_id: str, prompt: str | None = None, **fields: Any):
    """Send a ``chat`` and wait for its ``done``; return the ack."""
    payload = {"id": request_id, **fields}
    if prompt is not None:
        payload["message"] = prompt
    ack = client.call("chat", payload)
    assert ack["ok"], ack
    name, end = client.wait_end(request_id)
    assert name == "done", end
    return ack


def replying(text: str) -> str:
    """The test server's directive to answer exactly ``text``."""
    return f"[[reply:{base64.b64encode(text.encode()).decode()}]]"


def refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The error of a refused request, checked to be JSON in the /v1 shape."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    return error


def shape(conversation: dict[str, Any]) -> list[tuple]:
    """A conversation's tree without its ids: each message's role, content, how it
    ended and the position of its parent; and which one is the current leaf."""
    position = {m["id"]: i for i, m in enumerate(conversation["messages"])}
    return [
        (
            m["role"],
            m["content"],
            m["finish_reason"],
            position.get(m["parent_id"]),
            m["id"] == conversation["current_leaf_id"],
        )
        for m in conversation["messages"]
    ]


def start_relay(tmp: Path, upstream, mode: str = DEFAULT_ASYNC_MODE, **env: str):
    return Relay(tmp, mode, relay_env(upstream, **env))


@pytest.fixture(scope="module")
def web_dist(tmp_path_factory) -> Path:
    """A built page of one line: what ``/`` serves in these tests."""
    dist = tmp_path_factory.mktemp("dist")
    (dist / "index.html").write_text("<!doctype html><title>chat</title>\n")
    return dist


@pytest.fixture(scope="module")
def anonymous(tmp_session, upstream, web_dist) -> Iterator[Relay]:
    """A relay without tokens: every owner is a browser's cookie."""
    server = start_relay(
        tmp_session,
        upstream,
        CORS_ALLOWED_ORIGINS=ORIGIN,
        WEB_DIST_DIR=str(web_dist),
        MAX_BODY_BYTES="1000000",
    )
    yield server
    server.quit()


@pytest.fixture(scope="module")
def guarded(tmp_session, upstream, web_dist) -> Iterator[Relay]:
    """A relay whose owners are its static tokens."""
    server = start_relay(
        tmp_session,
        upstream,
        AUTH_TOKENS="alice-token,bob-token",
        WEB_DIST_DIR=str(web_dist),
    )
    yield server
    server.quit()


# -- the whole API, once per async mode, and on PostgreSQL -----------------------------


def check_the_whole_api(relay: Relay, sockets) -> None:
    """A browser's conversation, made by Socket.IO chats (a second turn, and that
    turn's answer regenerated), through every endpoint."""
    browser = Owner.browser(relay)
    client = sockets(browser)
    prompt = f"Plan a picnic by the lake {fresh()}"
    first = chat(client, "c1", prompt)
    cid = first["conversation_id"]
    answer = client.text("c1")
    assert answer == upstream_text(prompt)
    second = chat(client, "c2", "And if it rains?", conversation_id=cid)
    question = second["message_ids"][0]
    again = chat(
        client, "c3", conversation_id=cid, parent_id=question, options={"seed": 3}
    )

    # Listed, newest first, with the current leaf: the regenerated answer.
    [listed] = browser.listing()["data"]
    assert set(listed) == SUMMARY_FIELDS
    assert (listed["id"], listed["title"], listed["model"]) == (
        cid,
        prompt,
        "test-model",
    )
    assert listed["current_leaf_id"] == again["answer_id"]

    # Read with every branch, oldest first, each answer as it was streamed.
    conversation = browser.conversation(cid)
    assert {k: conversation[k] for k in SUMMARY_FIELDS} == listed
    messages = conversation["messages"]
    assert all(set(m) == MESSAGE_FIELDS for m in messages)
    assert [(m["id"], m["parent_id"], m["role"], m["content"]) for m in messages] == [
        (first["message_ids"][0], None, "user", prompt),
        (first["answer_id"], first["message_ids"][0], "assistant", answer),
        (question, first["answer_id"], "user", "And if it rains?"),
        (second["answer_id"], question, "assistant", client.text("c2")),
        (again["answer_id"], question, "assistant", client.text("c3")),
    ]
    assert client.text("c2") != client.text("c3")
    assert [m["finish_reason"] for m in messages[1::2]] == ["stop"] * 2
    assert messages[1]["usage"]["completion_tokens"] == 30
    assert messages[1]["model"] == "test-model"

    # Search finds a word of an answer, and nothing for a word nobody wrote.
    word = answer.rstrip(".").split()[-1]
    assert word not in prompt
    assert browser.ids(q=word) == [cid]
    assert browser.listing(q="xylophone") == {"data": [], "next_cursor": None}

    # Renamed: the owner's connections hear of it.
    renamed = browser.api(
        "PATCH", f"/api/conversations/{cid}", json={"title": "  Picnic   plans "}
    )
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Picnic plans"
    client.wait(lambda c: ("conversation", renamed.json()) in c.notices)
    assert browser.listing()["data"][0]["title"] == "Picnic plans"

    # Exported as Markdown: the branch in view, under the new title.
    markdown = browser.api("GET", f"/api/conversations/{cid}/export?format=md")
    assert markdown.status_code == 200
    assert markdown.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert markdown.headers["Content-Disposition"] == (
        "attachment; filename=\"Picnic-plans.md\"; filename*=UTF-8''Picnic%20plans.md"
    )
    text = markdown.text
    assert text.startswith("# Picnic plans\n\n*test-model · ")
    assert f"## User\n\n{prompt}\n\n## Assistant\n\n{answer}\n" in text
    assert client.text("c3") in text and client.text("c2") not in text

    # Exported as JSON (every branch) and imported back: a copy with new ids.
    exported = browser.api("GET", f"/api/conversations/{cid}/export?format=json")
    assert exported.status_code == 200
    assert exported.headers["Content-Type"] == "application/json"
    assert exported.headers["Content-Disposition"].startswith(
        'attachment; filename="Picnic-plans.json"'
    )
    document = exported.json()
    assert document["format"] == "chatstream.conversation"
    assert len(document["messages"]) == 5
    imported = browser.api(
        "POST",
        "/api/conversations",
        data=exported.content,
        headers={"Content-Type": "application/json"},
    )
    assert imported.status_code == 201
    copy = imported.json()
    assert imported.headers["Location"] == f"/api/conversations/{copy['id']}"
    assert copy["id"] != cid and copy["title"] == "Picnic plans"
    original = browser.conversation(cid)
    assert shape(browser.conversation(copy["id"])) == shape(original)
    assert {m["id"] for m in copy["messages"]}.isdisjoint(
        m["id"] for m in original["messages"]
    )
    assert sorted(browser.ids()) == sorted([cid, copy["id"]])

    # Deleted: gone from every endpoint, as if it had never been; the copy stays.
    deleted = browser.api("DELETE", f"/api/conversations/{cid}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    client.wait(lambda c: ("conversation_deleted", {"id": cid}) in c.notices)
    for method, path in (
        ("GET", f"/api/conversations/{cid}"),
        ("GET", f"/api/conversations/{cid}/export?format=json"),
        ("DELETE", f"/api/conversations/{cid}"),
    ):
        error = refused(browser.api(method, path), 404, "not_found")
        assert error["message"] == "no such conversation"
    assert browser.ids() == [copy["id"]]

    # What no conversation can hold (PostgreSQL refuses a NUL in any text) gets the
    # same answer from every database.
    refused(browser.api("GET", "/api/conversations/a%00b"), 404, "not_found")
    refused(browser.api("GET", "/api/conversations?q=a%00b"), 400, "invalid_request")
    nul = browser.api(
        "PATCH", f"/api/conversations/{copy['id']}", json={"title": "a\u0000b"}
    )
    refused(nul, 400, "invalid_request")


def test_a_browsers_conversation_through_every_endpoint(relay, sockets):
    check_the_whole_api(relay, sockets)


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database on ``server``, dropped afterwards."""
    name = "api_" + fresh()
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_postgresql_serves_the_same_api(postgres, tmp_session, upstream, sockets):
    with fresh_database(postgres) as url:
        server = start_relay(tmp_session, upstream, DATABASE_URL=url)
        try:
            check_the_whole_api(server, sockets)
        finally:
            server.quit()


# -- owners ----------------------------------------------------------------------------


@pytest.fixture(params=["tokens", "cookies"])
def two_owners(request) -> tuple[Owner, Owner]:
    """Two owners of one server: two static tokens, or two anonymous browsers."""
    if request.param == "tokens":
        server = request.getfixturevalue("guarded")
        return Owner(server, token="alice-token"), Owner(server, token="bob-token")
    server = request.getfixturevalue("anonymous")
    return Owner.browser(server), Owner.browser(server)


def test_one_owner_never_sees_anothers_conversations(two_owners, sockets):
    alice, bob = two_owners
    alice_word, bob_word = f"alicorn{fresh()}", f"bobcat{fresh()}"
    alice_socket, bob_socket = sockets(alice), sockets(bob)
    mine = chat(alice_socket, "a1", f"secret {replying(f'Say {alice_word} twice.')}")
    theirs = chat(bob_socket, "b1", f"notes {replying(f'Say {bob_word} twice.')}")
    aid, bid = mine["conversation_id"], theirs["conversation_id"]
    before = alice.conversation(aid)

    assert bob.ids() == [bid] and alice.ids() == [aid]
    assert alice.ids(q=alice_word) == [aid] and bob.ids(q=bob_word) == [bid]
    assert bob.ids(q=alice_word) == [] and alice.ids(q=bob_word) == []
    # Another owner's conversation is answered exactly as one that does not exist.
    nowhere = "x" * 22
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"title": "mine now"}),
        ("DELETE", "", None),
        ("GET", "/export?format=md", None),
        ("GET", "/export?format=json", None),
    ):
        taken = bob.api(method, f"/api/conversations/{aid}{suffix}", json=body)
        missing = bob.api(method, f"/api/conversations/{nowhere}{suffix}", json=body)
        refused(taken, 404, "not_found")
        assert taken.json() == missing.json()
    assert alice.conversation(aid) == before

    # Announcements go to the owner's connections only: Alice's rename reaches
    # Bob's connection before his own would, were it in her room.
    assert alice.api("PATCH", f"/api/conversations/{aid}", json={"title": "A"}).ok
    assert bob.api("PATCH", f"/api/conversations/{bid}", json={"title": "B"}).ok
    bob_socket.wait(lambda c: any(s.get("title") == "B" for _, s in c.notices))
    assert {summary["id"] for _, summary in bob_socket.notices} == {bid}


def test_a_request_without_a_token_is_refused(guarded):
    missing = requests.get(guarded.url + "/api/conversations", timeout=30)
    error = refused(missing, 401, "unauthorized")
    assert "Authorization: Bearer" in error["message"]
    assert COOKIE not in missing.cookies
    wrong = Owner(guarded, token="carol-token").api("GET", "/api/conversations")
    refused(wrong, 401, "unauthorized")


def test_a_forged_or_tampered_cookie_is_a_new_owner_who_sees_nothing(
    anonymous, sockets
):
    alice = Owner.browser(anonymous)
    cid = chat(sockets(alice), "f1", f"private {fresh()}")["conversation_id"]
    _, owner_id = URLSafeSerializer("x").loads_unsafe(alice.cookie)
    forged = URLSafeSerializer("not the secret", salt="chatstream.owner").dumps(
        owner_id
    )
    body, _, signature = alice.cookie.rpartition(".")
    # The signature's first character: all of its bits count (the last one's do not).
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for cookie in (forged, f"{body}.{flipped}", "garbage", alice.cookie + "x"):
        stranger = Owner(anonymous, cookie=cookie)
        response = stranger.api("GET", "/api/conversations")
        assert response.json() == {"data": [], "next_cursor": None}
        # A new owner, with a cookie of its own.
        issued = response.cookies[COOKIE]
        assert issued not in (cookie, alice.cookie)
        refused(stranger.api("GET", f"/api/conversations/{cid}"), 404, "not_found")
        assert Owner(anonymous, cookie=issued).ids() == []
    assert alice.ids() == [cid]


def test_the_owner_cookie_is_signed_httponly_and_lax(anonymous):
    response = requests.get(anonymous.url + "/api/conversations", timeout=30)
    header = response.headers["Set-Cookie"]
    assert header.startswith(f"{COOKIE}=")
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert attributes == {
        "httponly",
        "samesite=lax",
        "path=/",
        f"max-age={400 * 24 * 3600}",
    } | {a for a in attributes if a.startswith("expires=")}
    # A browser that has one keeps it.
    again = Owner(anonymous, cookie=response.cookies[COOKIE])
    assert "Set-Cookie" not in again.api("GET", "/api/conversations").headers


def test_the_page_gives_a_browser_its_owner_before_it_connects(
    anonymous, guarded, sockets
):
    page = requests.get(anonymous.url + "/", timeout=30)
    assert page.status_code == 200
    browser = Owner(anonymous, cookie=page.cookies[COOKIE])
    assert "HttpOnly" in page.headers["Set-Cookie"]
    assert page.headers["Cache-Control"] == "private, no-cache"
    reloaded = requests.get(anonymous.url + "/", headers=browser.headers, timeout=30)
    assert "Set-Cookie" not in reloaded.headers
    cid = chat(sockets(browser), "p1", f"from the page {fresh()}")["conversation_id"]
    assert browser.ids() == [cid]
    # With tokens, the token is the owner: no cookie.
    assert "Set-Cookie" not in requests.get(guarded.url + "/", timeout=30).headers


# -- listing ---------------------------------------------------------------------------


def test_pages_follow_next_cursor_newest_first(anonymous, sockets):
    browser = Owner.browser(anonymous)
    client = sockets(browser)
    made = [
        chat(client, f"p{n}", f"page {n} [[tokens:2]]")["conversation_id"]
        for n in range(5)
    ]
    newest_first = made[::-1]

    def walk(**params: Any) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            page = browser.listing(limit=2, **params)
            pages.append([c["id"] for c in page["data"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages
            params["before"] = cursor

    assert walk() == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    assert walk(q="page") == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    # A conversation that goes on is the newest again.
    chat(client, "more", "one more [[tokens:2]]", conversation_id=made[0])
    assert browser.ids(limit=2) == [made[0], made[4]]


# -- bad input -------------------------------------------------------------------------

KNOWN = "{known}"
BAD_REQUESTS = [
    ("GET", "/api/conversations?limit=0", None, "limit"),
    ("GET", "/api/conversations?limit=101", None, "limit"),
    ("GET", "/api/conversations?limit=ten", None, "limit"),
    ("GET", "/api/conversations?limit=-1", None, "limit"),
    ("GET", "/api/conversations?limit=%C2%B2", None, "limit"),
    ("GET", "/api/conversations?limit=" + "9" * 40, None, "limit"),
    ("GET", "/api/conversations?before=nonsense", None, "before"),
    ("GET", "/api/conversations?before=" + "A" * 300, None, "before"),
    ("GET", "/api/conversations?q=" + "word+" * 200, None, "q"),
    ("GET", "/api/conversations?q=a%00b", None, "q"),
    ("PATCH", f"/api/conversations/{KNOWN}", {"title": ""}, "title"),
    ("PATCH", f"/api/conversations/{KNOWN}", {"title": "   "}, "title"),
    ("PATCH", f"/api/conversations/{KNOWN}", {"title": "x" * 201}, "title"),
    ("PATCH", f"/api/conversations/{KNOWN}", {"title": 5}, "title"),
    ("PATCH", f"/api/conversations/{KNOWN}", {}, "title"),
    ("PATCH", f"/api/conversations/{KNOWN}", {"title": "a", "model": "b"}, "model"),
    ("PATCH", f"/api/conversations/{KNOWN}", ["title"], "body"),
    ("PATCH", f"/api/conversations/{KNOWN}", b"{title", "body"),
    ("PATCH", f"/api/conversations/{KNOWN}", b'{"title": "\\ud800"}', "title"),
    ("GET", f"/api/conversations/{KNOWN}/export?format=pdf", None, "format"),
    ("POST", "/api/conversations", b"not json", "body"),
    ("POST", "/api/conversations", [], "document"),
    ("POST", "/api/conversations", {"format": "other", "version": 1}, "format"),
    (
        "POST",
        "/api/conversations",
        {"format": "chatstream.conversation", "version": 1, "messages": "x"},
        "messages",
    ),
    ("GET", "/api/blobs/not-a-hash", None, "sha256"),
]


@pytest.fixture(scope="module")
def known(anonymous) -> tuple[Owner, str]:
    """A browser with one conversation."""
    browser = Owner.browser(anonymous)
    client = browser.socket()
    try:
        cid = chat(client, "k1", "known [[tokens:2]]")["conversation_id"]
    finally:
        client.close()
    return browser, cid


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD_REQUESTS)
def test_every_bad_input_gets_400_naming_the_field(known, method, path, body, field):
    browser, cid = known
    path = path.replace(KNOWN, cid)
    if isinstance(body, bytes):
        response = browser.api(method, path, data=body)
    else:
        response = browser.api(method, path, json=body)
    error = refused(response, 400, "invalid_request")
    assert error["message"].startswith(f"{field}: ")
    assert error["param"] == field
    assert browser.conversation(cid)["title"] == "known [[tokens:2]]"


def test_unknown_paths_and_methods_get_json_errors(known):
    browser, cid = known
    refused(browser.api("GET", "/api/nothing"), 404, "not_found")
    wrong = browser.api("PUT", f"/api/conversations/{cid}")
    refused(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["Allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}


def test_a_body_over_the_cap_gets_413(known):
    browser, _ = known
    response = browser.api(
        "POST",
        "/api/conversations",
        data=b"{" + b" " * 1_100_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    refused(response, 413, "body_too_large")


def test_origins_follow_the_socketio_rule(known):
    browser, cid = known
    foreign = browser.api(
        "GET", "/api/conversations", headers={"Origin": "https://evil.example"}
    )
    refused(foreign, 403, "forbidden_origin")
    assert "Access-Control-Allow-Origin" not in foreign.headers
    deleting = browser.api(
        "DELETE", f"/api/conversations/{cid}", headers={"Origin": "null"}
    )
    refused(deleting, 403, "forbidden_origin")
    allowed = browser.api("GET", "/api/conversations", headers={"Origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = browser.api(
        "OPTIONS", f"/api/conversations/{cid}", headers={"Origin": ORIGIN}
    )
    assert preflight.status_code == 204
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert browser.ids() == [cid]


# -- images ----------------------------------------------------------------------------


def test_images_are_served_safely_to_their_owner_only(anonymous, sockets):
    browser = Owner.browser(anonymous)
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    ack = chat(
        sockets(browser),
        "i1",
        messages=[{"role": "user", "content": content}],
    )
    sha = hashlib.sha256(PNG_BYTES).hexdigest()
    question = browser.conversation(ack["conversation_id"])["messages"][0]
    assert question["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"/api/blobs/{sha}"},
    }

    image = browser.api("GET", f"/api/blobs/{sha}")
    assert image.status_code == 200
    assert image.content == PNG_BYTES
    assert image.headers["Content-Type"] == "image/png"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert image.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert "Content-Disposition" not in image.headers
    assert image.headers["ETag"] == f'"{sha}"'
    assert "max-age=31536000" in image.headers["Cache-Control"]
    cached = browser.api(
        "GET", f"/api/blobs/{sha}", headers={"If-None-Match": f'"{sha}"'}
    )
    assert (cached.status_code, cached.content) == (304, b"")

    stranger = Owner.browser(anonymous)
    refused(stranger.api("GET", f"/api/blobs/{sha}"), 404, "not_found")
    refused(browser.api("GET", f"/api/blobs/{'0' * 64}"), 404, "not_found")

    # An SVG, which can carry scripts, only ever downloads.
    document = browser.api(
        "GET", f"/api/conversations/{ack['conversation_id']}/export?format=json"
    ).json()
    document["messages"][0]["content"][1]["image_url"]["url"] = SVG
    copy = browser.api("POST", "/api/conversations", json=document).json()
    svg_sha = hashlib.sha256(SVG_BYTES).hexdigest()
    assert copy["messages"][0]["content"][1]["image_url"]["url"] == (
        f"/api/blobs/{svg_sha}"
    )
    svg = browser.api("GET", f"/api/blobs/{svg_sha}")
    assert svg.content == SVG_BYTES
    assert svg.headers["Content-Type"] == "image/svg+xml"
    assert svg.headers["Content-Disposition"] == (
        f'attachment; filename="{svg_sha[:16]}.svg"'
    )
    assert svg.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"


# -- restarts and failures -------------------------------------------------------------


def test_without_history_the_api_answers_not_found(tmp_session, upstream):
    server = start_relay(tmp_session, upstream, HISTORY="false")
    try:
        for path in ("/api/conversations", "/api/conversations/abc"):
            error = refused(
                requests.get(server.url + path, timeout=30), 404, "not_found"
            )
            assert error["message"] == (
                "this server keeps no conversations (HISTORY=false)"
            )
    finally:
        server.quit()


def test_conversations_and_branches_survive_a_restart(tmp_path, upstream, sockets):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/kept.db",
        "OWNER_SECRET": "restart-secret",
    }
    server = start_relay(tmp_path, upstream, **env)
    try:
        browser = Owner.browser(server)
        client = sockets(browser)
        first = chat(client, "r1", f"remember me {fresh()}")
        cid = first["conversation_id"]
        chat(client, "r2", conversation_id=cid, parent_id=first["message_ids"][0])
        kept = browser.conversation(cid)
        client.close()
    finally:
        server.process.stop()
    assert len(kept["messages"]) == 3

    again = start_relay(tmp_path, upstream, **env)
    try:
        browser = Owner(again, cookie=browser.cookie)
        assert browser.conversation(cid) == kept
        assert browser.ids() == [cid]
        # And it goes on from the branch in view.
        more = chat(sockets(browser), "r3", "and then?", conversation_id=cid)
        messages = browser.conversation(cid)["messages"]
        assert messages[3]["parent_id"] == kept["current_leaf_id"]
        assert messages[-1]["id"] == more["answer_id"]
    finally:
        again.quit()


def test_a_stopped_postgresql_gets_503_then_serves_again(
    tmp_session, upstream, sockets
):
    database = PostgresServer(tmp_session)
    server = start_relay(tmp_session, upstream, DATABASE_URL=database.url)
    try:
        browser = Owner.browser(server)
        cid = chat(sockets(browser), "d1", f"kept {fresh()}")["conversation_id"]
        database.stop()
        for method, path, body in (
            ("GET", "/api/conversations", None),
            ("GET", "/api/conversations?q=kept", None),
            ("GET", f"/api/conversations/{cid}", None),
            ("PATCH", f"/api/conversations/{cid}", {"title": "t"}),
            ("DELETE", f"/api/conversations/{cid}", None),
            ("GET", f"/api/conversations/{cid}/export", None),
            ("GET", f"/api/blobs/{'0' * 64}", None),
        ):
            response = browser.api(method, path, json=body)
            error = refused(response, 503, "history_unavailable")
            assert error["message"] == (
                "the conversation store is unavailable; retry shortly"
            )
            assert int(response.headers["Retry-After"]) >= 1
        database.start()
        assert wait_until(lambda: browser.api("GET", "/api/conversations").ok)
        assert browser.ids() == [cid]
    finally:
        server.quit()
        database.close()


def test_a_locked_sqlite_database_gets_503_on_writes_and_still_reads(known, anonymous):
    browser, cid = known
    path = anonymous.process.log_path.with_suffix(".db")
    # Another writer holds SQLite's write lock past the store's wait.
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        renamed = browser.api(
            "PATCH", f"/api/conversations/{cid}", json={"title": "locked out"}
        )
        refused(renamed, 503, "history_unavailable")
        assert browser.ids() == [cid]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert browser.conversation(cid)["title"] == "known [[tokens:2]]"
    renamed = browser.api("PATCH", f"/api/conversations/{cid}", json={"title": "ok"})
    assert renamed.status_code == 200
    assert browser.api(
        "PATCH", f"/api/conversations/{cid}", json={"title": "known [[tokens:2]]"}
    ).ok
