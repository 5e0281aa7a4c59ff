"""An OpenAI-compatible streaming test server, the stand-in for the remote service.

Integration tests and benchmarks point the real `openai` package at it over HTTP::

    python -m tests.openai_server --port 0 [--host 127.0.0.1] [--ttft 0.05]
        [--tps 200] [--reply-tokens 30] [--api-key K] [--models a,b]

It prints one line, ``listening on http://HOST:PORT``, once it accepts requests
(``--port 0`` picks a free port and prints it). ``--api-key`` defaults to the
``TEST_SERVER_API_KEY`` environment variable; ``--tps 0`` streams without delay.

Endpoints: ``POST /v1/chat/completions`` (streamed with ``stream: true``, plain
``chat.completion`` JSON otherwise), ``GET /v1/models``, ``POST /v1/moderations``
(OpenAI's moderation endpoint, each input judged by ``{{flag}}``, ``{{fail}}`` and
``{{slow:S}}`` directives in its own text: ``moderations.py``), and for tests
``GET /_requests`` (one record per completion request, newest last, the last
10,000 kept), ``GET /_moderations`` (one per moderation request) and
``POST /_reset`` (forget them all).

A request is checked as the real service checks it, each refusal a 400 whose
``param`` names the field (``validation.py``): roles ``system``, ``developer``,
``user``, ``assistant``, ``tool``; content a string or a list of parts (``text``
for every role, ``image_url`` for ``user``, whose ``url`` is a base64
``data:image/...`` URL or an ``http(s)`` URL, never fetched; ``refusal`` for
``assistant``); an assistant message may have ``content: null`` when it carries
``tool_calls``; each ``tool`` message's ``tool_call_id`` answers a call of the
assistant message just before it (other tool messages between), and every such
call is answered; ``tools`` entries of type ``function`` with a ``name``;
``tool_choice`` and ``parallel_tool_calls`` only with ``tools``; ``stop`` a string
or up to 4; ``top_logprobs`` (0-20) only with ``logprobs: true``;
``response_format`` of type ``text``, ``json_object`` or ``json_schema`` (with a
``name``); ``n`` 1; ranges of ``temperature``, ``top_p`` and the penalties.

The reply is deterministic: it quotes the first words of the last user message,
then adds filler words chosen by hashing the conversation (and ``seed``, when the
request has one), one word per content chunk. These request fields take effect:

    max_tokens, max_completion_tokens
                        cut the answer (below), finish_reason "length"
    stop                the answer ends before the first stop sequence in its
                        text, finish_reason "stop", and no tool calls are made
    seed                other filler words: build_reply(..., seed=S)
    response_format     json_object: the answer is build_json_reply's JSON
                        text, {"answer": R}; json_schema: an object with every
                        property the schema declares (good for the openai
                        package's .parse()); streamed as split_reply's pieces
    logprobs, top_logprobs
                        each answer chunk's choice carries logprobs.content,
                        one token_logprobs entry (top_logprobs alternatives,
                        the token itself first), the whole completion's all
    tools, tool_choice, parallel_tool_calls
                        name the calls of [[tool_calls:N]]; tool_choice "none"
                        makes none, a named function is the one called;
                        parallel_tool_calls false makes at most one

Faults are chosen per request by directives in the last user message's text;
they combine, and are removed from the text before the reply is built. The last
user message governs the whole turn: when tool results follow it, its directives
still apply (a conversation that ends with tool results is answered in text):

    [[status:N]]        answer HTTP N (400-599) with an OpenAI error body
    [[error_after:N]]   after N content chunks send an error event, then end
    [[stall_after:N]]   after N content chunks send nothing until the client leaves
    [[close_after:N]]   after N content chunks drop the connection mid-body
    [[finish:R]]        finish_reason R: stop, length, content_filter, tool_calls
                        (tool_calls without [[tool_calls:N]] adds one tool-call
                        delta, "lookup", before the finish chunk)
    [[no_usage]]        never send usage, even when stream_options asks for it
    [[usage_in_choice]] put usage on the finish chunk, no separate usage chunk
    [[null_choices]]    a chunk with "choices": null before each content chunk
    [[empty_choices]]   a chunk with "choices": [] before each content chunk
    [[empty_deltas]]    a chunk whose content is "" or null before each one
    [[keepalive]]       a ": keep-alive" comment before the role and each content chunk
    [[tokens:N]]        reply length in words (default --reply-tokens)
    [[ttft:S]]          seconds before the first content chunk (default --ttft)
    [[tps:N]]           content chunks per second after that (default --tps)
    [[reasoning:N]]     N reasoning words before the answer, one per chunk, paced
                        as content chunks (the first is due at ttft); they are
                        build_reasoning(messages, N)
    [[reasoning_field:F]]
                        where the reasoning goes: reasoning_content (the default:
                        delta.reasoning_content, as DeepSeek, llama.cpp, LiteLLM
                        and older vLLM send it), reasoning (delta.reasoning, as
                        OpenRouter, Ollama and newer vLLM) or think (inline in
                        delta.content, "<think>" opening the first reasoning chunk
                        and "</think>" closing the last, as a server without a
                        reasoning parser sends it)
    [[split_think]]     with think, cut each tag across two chunks: "<th" in a
                        chunk of its own just before the first reasoning chunk,
                        which starts "ink>"; the last one ends "</thi" and "nk>"
                        follows at once in a chunk of its own (HTTP 400 without
                        [[reasoning_field:think]])
    [[reply:B]]         the reply is the UTF-8 text whose base64 is B (markdown,
                        say) instead of build_reply's, streamed as split_reply's
                        whitespace-led pieces, one per content chunk, which
                        concatenate to it ([[tokens:N]] does not apply)
    [[tool_calls:N]]    after the reasoning and content the other directives
                        give ([[tokens:0]]: no content), N tool calls, exactly
                        build_tool_calls(messages, tools, N), finish_reason
                        "tool_calls"; paced, one chunk a slot like content.
                        Unless the conversation ends with tool results
    [[tool_style:S]]    how the calls stream: openai (the default: per call a
                        first chunk {index, id, type: "function", function:
                        {name, arguments: ""}}, then argument fragments of 5
                        characters, {index, function: {arguments}}, one call
                        after another), ollama (each call whole in one chunk,
                        every call at index 0 with its own id), batched (one
                        chunk opening every call, then chunks each carrying the
                        next fragment of every call, their order reversed every
                        other chunk) or split_utf8 (as openai, but each event is
                        written in two HTTP chunks cut inside a UTF-8 character
                        of its arguments, or in its middle when it has none).
                        Tool-call events carry non-ASCII characters unescaped
    [[refusal]]         the answer is streamed as delta.refusal (content null),
                        and is message.refusal in a whole completion
    [[cached:N]]        usage has prompt_tokens_details: {cached_tokens: N}
                        (prompt_tokens is at least N)
    [[reject_param:P]]  answer HTTP 400, OpenAI's "Unrecognized request argument
                        supplied: P" with param P, when the body has the field
                        P (repeatable; otherwise answer normally)

N in the ``*_after`` directives counts content chunks, then the tool-call chunks
after them (an N past the end means after the last one, before the finish
chunk); the pause before the fault is the one the next chunk would have had.
Reasoning chunks (``think`` ones and split tags included) never count: the fault
comes after all of the reasoning and N answer chunks. The ``*_choices``,
``empty_deltas`` and ``keepalive`` extras come before each reasoning and answer
chunk, not before tool-call chunks. An unknown or malformed directive is answered
with HTTP 400, so a typo in a test fails loudly.

``max_tokens`` (or ``max_completion_tokens``) counts reasoning words first, then
answer words, then the tool calls' tokens: one that ends inside the reasoning
streams that much of it (with ``think``, no closing tag) and no answer; one too
small for the calls makes none. Either cut finishes with ``length``. Usage
counts reasoning and answer words in ``completion_tokens`` (a tag is no token),
and for each tool call one token for its name and one for each 5-character
fragment of its arguments; with ``[[reasoning:N]]`` it adds
``completion_tokens_details: {"reasoning_tokens": R}``, R the reasoning words
sent, so never more than ``completion_tokens``. A whole (non-streamed)
completion carries the reasoning the same way, in ``message.reasoning_content``,
``message.reasoning`` or inline in ``content``; its calls in
``message.tool_calls`` (``content`` null when there is no text). Every chunk and
completion has ``system_fingerprint: "fp_test"``.

A request record holds ``n``; ``body``, the request's JSON as received (every
field, unchanged; null when it was not a JSON object); ``prompt``, the text of the
last message (text parts joined by spaces); and, read from the body, ``model,
messages, stream, stream_options, max_tokens`` (either spelling) and
``temperature``; then ``authorization_present, status, error`` (the error body's
``error`` object of a refused request), ``started_at, ended_at, outcome,
chunks_sent``. ``outcome`` is ``streaming`` or ``stalled`` while the stream is
open, then ``completed``, ``client_closed`` (the client left first;
``ended_at`` is when that was seen), ``aborted`` (``close_after``),
``error_status`` or ``error_midstream``. ``chunks_sent`` counts ``data: {...}``
events (reasoning and tool-call ones included), not ``[DONE]``.

The server is a small HTTP/1.1 server on asyncio's transports (keep-alive,
pipelining, chunked request bodies, ``Expect: 100-continue``, flow control; other
HTTP versions get 505), so that one process feeds a thousand paced streams: one
pacer for the whole process wakes when the next chunk is due (no more often than
every ``PACER_TICK`` seconds, so a busy server writes hundreds of chunks a wake)
and writes every due chunk of every stream, each its own SSE event in its own
HTTP chunk, on an absolute schedule (paced chunk k is due at ttft + k / tps).

Modules: ``directives`` (the directives), ``replies`` (what is said), ``tools``
(tool calls and their streamed shapes), ``validation`` (the request checks),
``completion`` (one request's answer, and its whole form), ``http11`` (HTTP/1.1
and the connection), ``streams`` (streams and their pacer), ``moderations`` (the
moderation endpoint's verdicts), ``endpoints`` and ``run``.
"""

from .directives import (
    FINISH_REASONS,
    REASONING_FIELDS,
    TOOL_STYLES,
    DirectiveError,
    Directives,
    parse_directives,
)
from .endpoints import DEFAULT_MODEL, MAX_RECORDS, Settings
from .errors import error_body
from .replies import (
    build_json_reply,
    build_reasoning,
    build_reply,
    count_prompt_tokens,
    cut_at_stop,
    last_user_index,
    message_text,
    split_reply,
    token_logprobs,
)
from .run import main, parse_args, serve
from .streams import PACER_TICK
from .tools import build_tool_calls, tool_call_deltas

__all__ = [
    "DEFAULT_MODEL",
    "FINISH_REASONS",
    "MAX_RECORDS",
    "PACER_TICK",
    "REASONING_FIELDS",
    "TOOL_STYLES",
    "DirectiveError",
    "Directives",
    "Settings",
    "build_json_reply",
    "build_reasoning",
    "build_reply",
    "build_tool_calls",
    "count_prompt_tokens",
    "cut_at_stop",
    "error_body",
    "last_user_index",
    "main",
    "message_text",
    "parse_args",
    "parse_directives",
    "serve",
    "split_reply",
    "token_logprobs",
    "tool_call_deltas",
]
