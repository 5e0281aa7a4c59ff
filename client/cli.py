"""Command line: ``python -m client [options] [prompt]``.

Exit status: 0 answered, 1 the request failed, 2 usage error, 3 the server
cannot be reached or refused the connection, or the connection dropped and the
answer could not be resumed, 130 interrupted by Ctrl-C.

A reasoning model's reasoning is printed before its answer, dimmed when stdout is a
terminal, with a blank line between the two; ``--no-reasoning`` leaves it out.

A connection that drops mid-answer is reconnected and the answer resumed where it
stopped; ``--json`` shows the ``resume_ack``, plain output notes ``[reconnected]`` on
stderr after the answer.

A tool call the model makes is noted on stderr after the answer, as
``[tool call NAME(ARGUMENTS)]``; the command line runs no tools.

The server keeps the conversations (unless ``--no-store``): ``--list`` lists them,
``--continue [ID]`` goes on with one (the most recently updated without an ID), in
one-shot and interactive mode alike. Without a token, the server knows this user by
an anonymous owner cookie, kept between runs in
``$XDG_CONFIG_HOME/chatstream/owner-HOST:PORT`` (see client/owner.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from datetime import datetime
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from client.answer import REASONING, TOOL_CALL, Delta
from client.chat import DEFAULT_URL, ChatClient
from client.errors import ChatConnectionError, ChatError
from client.images import MAX_IMAGE_BYTES, image_url
from client.owner import cookie_path, read_cookie, save_cookie

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description=(
            "Stream an answer from the chatstream relay. Without a prompt: a "
            "conversation at a '> ' prompt (/reset starts a new one, /quit or EOF "
            "ends it), or, when stdin is not a terminal, the whole of stdin as the "
            "prompt. Ctrl-C stops the answer; a second Ctrl-C exits. The server "
            "keeps the conversations (--list, --continue); without a token, it "
            "knows you by a cookie kept in "
            "$XDG_CONFIG_HOME/chatstream/owner-HOST:PORT."
        ),
    )
    parser.add_argument("prompt", nargs="*", help="the prompt; words are joined")
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="keep the conversation going at a '> ' prompt",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("CHAT_URL") or DEFAULT_URL,
        help="the server (default: $CHAT_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CHAT_TOKEN") or None,
        help="auth token, for servers that require one (default: $CHAT_TOKEN)",
    )
    parser.add_argument("--model", help="the model to ask (default: the server's)")
    parser.add_argument(
        "--system", help="a system message, sent before the conversation"
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="attach an image (a file of up to "
        f"{MAX_IMAGE_BYTES // 2**20} MiB, or an http(s) URL) to the prompt, or to "
        "the first one typed; repeat for several",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--max-tokens", type=int, help="cap on the answer's tokens")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every event as a JSON line, as the server sent it, instead of "
        "the text",
    )
    parser.add_argument(
        "--no-reasoning",
        dest="reasoning",
        action="store_false",
        help="leave out a reasoning model's reasoning, which is otherwise printed "
        "(dimmed on a terminal) before the answer",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print model, finish reason, ttft, tokens/s and usage to stderr",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait to connect and for the first answer (default: 10)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the stored conversations, newest first: id, last update, title "
        "(--json: one JSON object a line); words given search them",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=20,
        help="how many conversations --list shows (default: %(default)s)",
    )
    parser.add_argument(
        "--continue",
        dest="continue_id",
        nargs="?",
        const="",
        metavar="ID",
        help="go on with a stored conversation (without ID: the most recently "
        "updated); a prompt goes before it, or after --",
    )
    parser.add_argument(
        "--no-store",
        dest="store",
        action="store_false",
        help="keep nothing on the server: the history stays in this process",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https", "ws", "wss") or not url.netloc:
        parser.error(f"--url: not an http(s):// or ws(s):// URL: {args.url!r}")
    if args.continue_id is not None and not args.store:
        parser.error("--continue: not with --no-store (nothing is stored)")
    if args.list:
        if args.interactive or args.continue_id is not None:
            parser.error("--list: not with --interactive or --continue")
        if args.limit < 1:
            parser.error("--limit: must be at least 1")
        return _list(args)
    prompt = " ".join(args.prompt).strip()
    if args.prompt and not prompt:
        parser.error("the prompt is empty")
    interactive = args.interactive or (not prompt and sys.stdin.isatty())
    if not prompt and not interactive:
        try:
            prompt = sys.stdin.read().strip()
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if not prompt:
            parser.error("no prompt given and stdin is empty")

    try:
        images = [image_url(image) for image in args.image]
    except ValueError as exc:
        parser.error(f"--image: {exc}")

    options: dict[str, Any] = {}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.max_tokens is not None:
        # Not checked here: the server's invalid_request names the field.
        options["max_tokens"] = args.max_tokens
    chat = _client(args, model=args.model, options=options, system=args.system)
    session = _Session(
        chat,
        json_mode=args.json,
        stats=args.stats,
        reasoning=args.reasoning,
        images=images,
    )
    chat.on_event = session.on_event
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, session.on_sigint)
    try:
        if args.continue_id is not None:
            found = _continue(chat, args.continue_id, hint=not args.prompt)
            if interactive:
                _note(f"[continuing {found['id']}: {found.get('title') or ''}]")
        chat.connect()
        status = EXIT_OK
        if prompt:
            status = session.exchange(prompt)
        if interactive:
            status = session.converse()
        return status
    except ChatConnectionError as exc:
        _error(exc)
        return EXIT_UNREACHABLE
    except ChatError as exc:
        # A conversation that cannot be continued (not_found, history_unavailable).
        _error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)  # leave the shell prompt on a fresh line
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`); stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        chat.close()
        _keep_cookie(args, chat)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _client(args: argparse.Namespace, **options: Any) -> ChatClient:
    """The client for these arguments, as the kept owner cookie's owner."""
    cookie = None
    if not args.token and (args.store or args.list):
        cookie = read_cookie(args.url)
    args.kept_cookie = cookie
    return ChatClient(
        args.url,
        token=args.token,
        timeout=args.timeout,
        store=args.store,
        owner_cookie=cookie,
        **options,
    )


def _keep_cookie(args: argparse.Namespace, chat: ChatClient) -> None:
    """Keep the owner cookie the server gave, for the next run."""
    cookie = chat.owner_cookie
    if cookie is None or cookie == args.kept_cookie:
        return
    try:
        save_cookie(args.url, cookie)
    except OSError as exc:
        _note(
            f"[the owner cookie could not be kept in {cookie_path(args.url)}: "
            f"{exc.strerror or exc}; the next run will not see these conversations]"
        )


def _list(args: argparse.Namespace) -> int:
    """Print the stored conversations; returns the exit status."""
    chat = _client(args)
    try:
        found = chat.conversations(" ".join(args.prompt).strip() or None, args.limit)
    except ChatConnectionError as exc:
        _error(exc)
        return EXIT_UNREACHABLE
    except ChatError as exc:
        _error(exc)
        return EXIT_FAILED
    finally:
        _keep_cookie(args, chat)
    try:
        for conversation in found:
            if args.json:
                print(json.dumps(conversation), flush=True)
            else:
                print(
                    f"{conversation.get('id')}  "
                    f"{_local_time(conversation.get('updated_at'))}  "
                    f"{conversation.get('title') or '(untitled)'}",
                    flush=True,
                )
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _continue(chat: ChatClient, conversation_id: str, *, hint: bool) -> dict[str, Any]:
    """Load the conversation to go on with: ``conversation_id``, or the most
    recently updated one when it is empty. ``hint``: a prompt may have been taken
    for the ID, say how to give both."""
    if not conversation_id:
        latest = chat.conversations(limit=1)
        if not latest:
            raise ChatError("not_found", "--continue: no stored conversation yet")
        conversation_id = latest[0]["id"]
    try:
        return chat.load(conversation_id)
    except ChatError as exc:
        if exc.code != "not_found":
            raise
        message = f"--continue {conversation_id}: {exc.message}"
        if hint:
            message += " (a prompt goes before --continue, or after --)"
        raise ChatError("not_found", message) from None


def _local_time(value: Any) -> str:
    """An ISO 8601 time as the local date and minute; as it is when unreadable."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


class _Session:
    """Runs exchanges and owns Ctrl-C: the first stops the answer, a second exits."""

    def __init__(
        self,
        chat: ChatClient,
        *,
        json_mode: bool,
        stats: bool,
        reasoning: bool,
        images: list[str] | None = None,
    ) -> None:
        self.chat = chat
        self.json_mode = json_mode
        self.stats = stats
        self.reasoning = reasoning
        # The images for the next prompt (the first one): data: or http(s) URLs.
        self.images = list(images or [])
        self.streaming = False
        self.interrupted = False
        self.resumed = False

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        if self.json_mode:
            _print_event(name, data)
        if name == "resume_ack" and data.get("ok"):
            self.resumed = True

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self.streaming:
            raise KeyboardInterrupt
        if self.interrupted:
            os._exit(EXIT_INTERRUPTED)  # now: no waiting for the server's done
        self.interrupted = True
        self.chat.stop()

    def exchange(self, prompt: str) -> int:
        """Send one prompt and print its answer; returns the exit status."""
        if self.chat.pending_tool_calls:
            # The model waits for results that only a program running the tools
            # can give.
            print(
                "error: the last answer asked for tool calls, which this command "
                "line does not run; /reset starts a new conversation",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_USAGE
        self.interrupted = False
        self.resumed = False
        self.streaming = True
        text = _Text(reasoning=self.reasoning)
        images, self.images = self.images, []
        try:
            for delta in self.chat.stream(prompt, images=images, reasoning=True):
                if not self.json_mode:
                    text.write(delta)
        except ChatError as exc:
            self.images = images  # for the next prompt, as the history is unchanged
            if text.wrote:
                print(flush=True)
            _error(exc)
            if isinstance(exc, ChatConnectionError):
                return EXIT_UNREACHABLE
            return EXIT_FAILED
        finally:
            self.streaming = False
        calls = self.chat.pending_tool_calls
        if not self.json_mode:
            if text.wrote or not calls:
                print(flush=True)
            if self.resumed:
                # After the answer rather than inside it: stdout and stderr often
                # share the terminal.
                _note("[reconnected]")
            for call in calls:
                function = call.get("function") or {}
                _note(
                    f"[tool call {function.get('name')}({function.get('arguments')})]"
                )
        result = self.chat.last_result or {}
        if self.stats:
            _note(_format_stats(result))
        if self.interrupted and result.get("finish_reason") == "cancelled":
            _note("[stopped]")
            return EXIT_INTERRUPTED
        return EXIT_OK

    def converse(self) -> int:
        """Read prompts until /quit or EOF, keeping the conversation."""
        tty = sys.stdin.isatty()
        if tty:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing for input())
        while True:
            try:
                line = input("> " if tty else "").strip()
            except EOFError:
                if tty:
                    print()
                return EXIT_OK
            if line == "/quit":
                return EXIT_OK
            if line == "/reset":
                self.chat.reset()
                _note("[conversation cleared]")
            elif line:
                self.exchange(line)


class _Text:
    """Writes one exchange's text to stdout: the reasoning (dimmed on a terminal),
    a blank line, then the answer."""

    def __init__(self, *, reasoning: bool) -> None:
        self.reasoning = reasoning
        self.dim = sys.stdout.isatty()
        self.wrote = False
        # The reasoning's last characters, until the answer begins.
        self.tail: str | None = None

    def write(self, delta: Delta) -> None:
        if delta.kind == TOOL_CALL:
            return  # noted once complete, after the answer
        if delta.kind == REASONING:
            if not self.reasoning:
                return
            self.tail = ((self.tail or "") + delta.text)[-2:]
            # Reset after each piece: a Ctrl-C or an error must not leave the
            # terminal dim.
            out = f"\x1b[2m{delta.text}\x1b[0m" if self.dim else delta.text
        else:
            out = delta.text
            if self.tail is not None:
                newlines = len(self.tail) - len(self.tail.rstrip("\n"))
                out = "\n" * (2 - newlines) + out  # a blank line after the reasoning
                self.tail = None
        sys.stdout.write(out)
        sys.stdout.flush()
        self.wrote = True


def _print_event(name: str, data: dict[str, Any]) -> None:
    print(json.dumps({"event": name, "data": data}), flush=True)


def _error(exc: ChatError) -> None:
    print(f"error: {exc.code}: {exc.message}", file=sys.stderr, flush=True)


def _note(text: str) -> None:
    if sys.stderr.isatty():
        text = f"\x1b[2m{text}\x1b[0m"  # dim: it is not part of the answer
    print(text, file=sys.stderr, flush=True)


def _format_stats(result: dict[str, Any]) -> str:
    usage = result.get("usage") or {}
    timing = result.get("timing") or {}
    ttft, total = timing.get("ttft_ms"), timing.get("total_ms")
    completion = usage.get("completion_tokens")
    fields = [
        f"model: {result.get('model', '?')}",
        f"finish: {result.get('finish_reason', '?')}",
        "ttft: -" if ttft is None else f"ttft: {ttft:.0f} ms",
    ]
    answer_ttft = timing.get("answer_ttft_ms", ttft)
    if answer_ttft != ttft:
        # The model reasoned first: when its answer began.
        fields.append(
            "answer ttft: -"
            if answer_ttft is None
            else f"answer ttft: {answer_ttft:.0f} ms"
        )
    # Speed after the first token, as llama.cpp and others report it: the wait
    # for the first token is already in ttft.
    span_ms = total - ttft if ttft is not None and total is not None else 0
    if span_ms > 0 and (completion or 0) > 1:
        fields.append(f"{(completion - 1) / span_ms * 1000:.1f} tokens/s")
    if usage:
        reasoning = usage.get("reasoning_tokens")
        fields.append(
            f"usage: {usage.get('prompt_tokens')} prompt + {completion} completion"
            + (f" ({reasoning} reasoning)" if reasoning else "")
            + f" = {usage.get('total_tokens')} tokens"
            + (" (estimated)" if usage.get("estimated") else "")
        )
    return "  ".join(fields)
