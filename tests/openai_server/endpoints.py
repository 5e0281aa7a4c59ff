"""The endpoints: chat completions (streamed or whole), the model list, and the
request records tests read back."""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .completion import Completion, plan, whole_completion
from .directives import DirectiveError, parse_directives
from .errors import RequestError, error_body
from .http11 import Connection, Reply, Request
from .moderations import DEFAULT_MODEL as DEFAULT_MODERATION_MODEL
from .moderations import moderation_response, plan_moderation
from .replies import last_user_index, message_text
from .streams import Pacer, Stream
from .validation import check_request

DEFAULT_MODEL = "test-model"
MAX_RECORDS = 10_000


@dataclass(frozen=True)
class Settings:
    """Server-wide defaults; directives override the pacing per request."""

    ttft: float = 0.05
    tps: float = 200.0
    reply_tokens: int = 30
    api_key: str | None = None
    models: tuple[str, ...] = ()  # empty: any model is served


class Service:
    """The endpoints of one server, with its request records."""

    def __init__(self, settings: Settings, pacer: Pacer) -> None:
        self.settings = settings
        self.pacer = pacer
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.moderation_records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.counter = 0
        self.connections: set[Connection] = set()
        self.routes: dict[str, tuple[str, Callable[..., Reply | None]]] = {
            "/v1/chat/completions": ("POST", self.chat_completions),
            "/v1/models": ("GET", self.list_models),
            "/v1/moderations": ("POST", self.moderations),
            "/_requests": ("GET", self.list_requests),
            "/_moderations": ("GET", self.list_moderations),
            "/_reset": ("POST", self.reset),
        }

    def handle(self, connection: Connection, request: Request) -> Reply | None:
        """The reply to `request`, or None when the endpoint answers by itself."""
        method, endpoint = request.method, self.routes.get(request.path)
        if endpoint is None or method not in (endpoint[0], "HEAD"):
            status = 404 if endpoint is None else 405
            error = {
                "message": f"Invalid URL ({method} {request.path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            headers = {} if endpoint is None else {"allow": endpoint[0]}
            return Reply(status, {"error": error}, headers)
        if method == "HEAD" and endpoint[0] != "GET":
            return Reply(405, error_body("Method Not Allowed", 405))
        return endpoint[1](connection, request)

    def list_requests(self, connection: Connection, request: Request) -> Reply:
        return Reply(200, list(self.records))

    def list_moderations(self, connection: Connection, request: Request) -> Reply:
        return Reply(200, list(self.moderation_records))

    def reset(self, connection: Connection, request: Request) -> Reply:
        self.records.clear()
        self.moderation_records.clear()
        return Reply(200, {"ok": True})

    def list_models(self, connection: Connection, request: Request) -> Reply:
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        names = self.settings.models or (DEFAULT_MODEL,)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "test-server"}
            for name in names
        ]
        return Reply(200, {"object": "list", "data": data})

    def chat_completions(
        self, connection: Connection, request: Request
    ) -> Reply | None:
        self.counter += 1
        record: dict[str, Any] = {
            "n": self.counter,
            "body": None,
            "prompt": None,
            "model": None,
            "messages": None,
            "stream": False,
            "stream_options": None,
            "max_tokens": None,
            "temperature": None,
            "authorization_present": "authorization" in request.headers,
            "status": 200,
            "error": None,
            "started_at": time.time(),
            "ended_at": None,
            "outcome": "streaming",
            "chunks_sent": 0,
        }
        self.records.append(record)
        try:
            answer = self._answer(request, record)
        except RequestError as exc:
            answer = Reply(exc.status, exc.body())
        request_id = "req_" + secrets.token_hex(16)
        if isinstance(answer, Reply):
            record.update(status=answer.status, outcome="error_status")
            record.update(error=answer.payload["error"], ended_at=time.time())
            answer.headers["x-request-id"] = request_id
            return answer
        answer.request_id = request_id
        if record["stream"]:
            Stream(connection, answer).begin()
            return None
        self._answer_whole_later(connection, answer)
        return None

    def _answer(self, request: Request, record: dict[str, Any]) -> Reply | Completion:
        """The Completion for `request`; a refusal is a Reply or a RequestError."""
        try:
            body = json.loads(request.body, parse_constant=_no_constant)
        except ValueError:
            body = None
        if isinstance(body, dict):
            _record_body(record, body)
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        if not isinstance(body, dict):
            raise RequestError("We could not parse the JSON body of your request.")
        check_request(body)
        model, messages = body["model"], body["messages"]
        if self.settings.models and model not in self.settings.models:
            message = (
                f"The model `{model}` does not exist or you do not have access to it."
            )
            raise RequestError(message, code="model_not_found", status=404)

        # The last user message's directives govern the whole turn, so the answer
        # to tool results follows the prompt that asked for the calls.
        last = last_user_index(messages)
        try:
            text = message_text(messages[last]) if last is not None else ""
            directives, _ = parse_directives(text)
        except DirectiveError as exc:
            raise RequestError(str(exc), "messages") from None
        for name in directives.reject_param:
            if name in body:
                raise RequestError(
                    f"Unrecognized request argument supplied: {name}", name
                )
        if directives.status is not None:
            message = (
                f"Injected error: HTTP {directives.status} ([[status]] directive)."
            )
            raise RequestError(message, status=directives.status)

        settings = self.settings
        tps = directives.tps if directives.tps is not None else settings.tps
        return Completion(
            record=record,
            directives=directives,
            model=model,
            **plan(body, directives, settings.reply_tokens),
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            ttft=directives.ttft if directives.ttft is not None else settings.ttft,
            interval=1 / tps if tps > 0 else 0.0,
            completion_id="chatcmpl-" + secrets.token_urlsafe(21)[:28],
            created=int(time.time()),
        )

    def _answer_whole_later(
        self, connection: Connection, completion: Completion
    ) -> None:
        record = completion.record

        def answer() -> None:
            record.update(outcome="completed", ended_at=time.time())
            reply = Reply(200, whole_completion(completion))
            reply.headers["x-request-id"] = completion.request_id
            connection.respond(reply)

        def client_left() -> None:
            timer.cancel()
            record.update(outcome="client_closed", ended_at=time.time())

        timer = self.pacer.loop.call_later(completion.ttft, answer)
        connection.on_close = client_left

    def moderations(self, connection: Connection, request: Request) -> Reply | None:
        """OpenAI's moderation endpoint, steered by directives in each input
        (``moderations.py``); a slow answer waits on the loop."""
        record: dict[str, Any] = {
            "n": len(self.moderation_records) + 1,
            "model": None,
            "input": None,
            "status": 200,
            "started_at": time.time(),
            "ended_at": None,
            "outcome": "waiting",
        }
        self.moderation_records.append(record)

        def answer(reply: Reply, outcome: str) -> None:
            record.update(status=reply.status, outcome=outcome, ended_at=time.time())
            reply.headers["x-request-id"] = "req_" + secrets.token_hex(16)
            connection.respond(reply)

        if (refusal := self._check_auth(request)) is not None:
            answer(refusal, "error_status")
            return None
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        try:
            plan = plan_moderation(body)
        except RequestError as exc:
            answer(Reply(exc.status, exc.body()), "error_status")
            return None
        model = body.get("model") or DEFAULT_MODERATION_MODEL
        record.update(model=model, input=plan.texts)
        if plan.fail is not None:
            failed = error_body("Injected moderation failure.", plan.fail)
            reply, outcome = Reply(plan.fail, failed), "error_status"
        else:
            reply, outcome = Reply(200, moderation_response(plan, model)), "answered"
        if not plan.delay:
            answer(reply, outcome)
            return None

        def client_left() -> None:
            timer.cancel()
            record.update(outcome="client_closed", ended_at=time.time())

        def later() -> None:
            connection.on_close = None
            answer(reply, outcome)

        timer = self.pacer.loop.call_later(plan.delay, later)
        connection.on_close = client_left
        return None

    def _check_auth(self, request: Request) -> Reply | None:
        expected = self.settings.api_key
        if expected is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, received = header.partition(" ")
        if scheme.lower() == "bearer" and received.strip() == expected:
            return None
        if not received.strip():
            message = (
                "You didn't provide an API key. You need to provide your API key "
                "in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            # The real service quotes the key it got (partly masked); quoting
            # all of it lets tests prove the relay never passes it on.
            message = (
                f"Incorrect API key provided: {received.strip()}. You can find "
                "your API key at https://platform.openai.com/account/api-keys."
            )
        return Reply(401, error_body(message, 401, code="invalid_api_key"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: not JSON


def _record_body(record: dict[str, Any], body: dict[str, Any]) -> None:
    """Keep the body as received, and the fields tests read most, before any
    check: a refused request is recorded too."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    record.update(
        body=body,
        prompt=message_text(last) if isinstance(last, dict) else None,
        model=body.get("model"),
        messages=messages,
        stream=body.get("stream") is True,
        stream_options=body.get("stream_options"),
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        temperature=body.get("temperature"),
    )
