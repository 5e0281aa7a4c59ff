// The client's view of a conversation, as pure functions over an array of messages.
// Every function returns the same array when an event changes nothing, and keeps the
// identity of every message it does not touch, so memoized components skip them.
//
// A message: {id, role: 'user'|'assistant', content}
// A user message's `content` is its text; it may also have `images` (see images.js):
//   [{id, name, type, width, height, bytes, url?}], `url` the data URL sent, held in
//   memory only: a transcript loaded from sessionStorage has none ("image not kept")
// An assistant message's `content` is its answer text; it also has:
//   reasoning  the reasoning ("thinking") text, from chunks of kind "reasoning"; it comes
//            before the answer, is shown apart from it and never goes back in the history
//   refusal  the model's refusal text (chunks of kind "refusal"), shown instead of an answer
//   toolCalls  [{index, id?, name?, arguments}] by index: the tool calls it streamed
//            (chunks of kind "tool_call"), replaced by the `done` event's `tool_calls`
//   thinkingSince  when (ms) its first reasoning chunk came
//   thinkingMs  how long it reasoned: set when the answer text starts, or when the
//            request ends with none; from the server's `done` timing once that is in
//   status   'streaming' | 'done' | 'error'
//   nextSeq  the seq of the next chunk to append: chunks of every kind share it
//   pending  {[seq]: {kind, delta | call}} for chunks that arrived ahead of a gap
//   doneEarly  a `done` that came before all the chunks it counts; applied once they are in
//   gapSince, gapResumes  while a seq is missing: when the hole was seen (or last asked
//            for again) in ms, and how many `resume`s went out for it (see noteGaps)
//   done     the server's `done` payload, once finished
//   error    {code, message, retryable}, once failed
//   resumeToken  from the `chat` ack: lets a new connection pick the stream up again
//   resuming     true between losing the connection (or a reload) and the resume ack
//   marks    while streaming, per seq: [content, reasoning, refusal length, toolCalls]
//            as they were before that chunk, for a `retract` to cut back to
//   retracted  true once the server took chunks back (moderation): the page says so

import { MAX_REQUEST_IMAGE_BYTES } from './images.js';

export function userMessage(id, content, images = []) {
  return images.length > 0 ? { id, role: 'user', content, images } : { id, role: 'user', content };
}

export function assistantMessage(id) {
  return {
    id,
    role: 'assistant',
    content: '',
    reasoning: '',
    refusal: '',
    toolCalls: [],
    status: 'streaming',
    nextSeq: 0,
    pending: {},
  };
}

function indexOfId(messages, id) {
  // The streaming message is almost always the last one: search from the end.
  for (let i = messages.length - 1; i >= 0; i -= 1) {
    if (messages[i].id === id && messages[i].role === 'assistant') return i;
  }
  return -1;
}

function replaceAt(messages, index, message) {
  const next = messages.slice();
  next[index] = message;
  return next;
}

function liveIndex(messages, id) {
  if (typeof id !== 'string') return -1;
  const index = indexOfId(messages, id);
  if (index < 0 || messages[index].status !== 'streaming') return -1;
  return index;
}

// How long a hole in `seq` may last before the page asks for the missing chunks again
// with `resume` on its current connection. One connection delivers in order, so a hole
// means chunks lost on the way (with several nodes, Redis pub/sub drops what it carries
// while Redis restarts); waiting a moment lets a replay already under way fill it first.
export const GAP_MS = 1000;
// Resumes sent for one hole before giving up: one usually fills it; more cover a replay
// lost too, or refused while the server's Redis is still coming back.
export const GAP_RESUMES = 3;

// A negative `resume` ack says these again after their error event: while the page's
// own resume for a hole is out, that event does not end the answer (the ack does).
const RESUME_REFUSALS = new Set(['resume_denied', 'invalid_request']);

// What an answer no longer needs once it has ended.
function settled(message) {
  const { doneEarly, gapSince, gapResumes, marks, ...rest } = message;
  return rest;
}

const TEXT_KINDS = new Set(['reasoning', 'refusal']);

// A chunk as a piece to append, or null when it is malformed: no `kind` is answer text
// (clients that ignore kinds show it all as the answer); a kind this page does not know
// takes its seq and is not shown.
function pieceOf(kind, delta, call) {
  if (kind === 'tool_call') {
    const fragment = toolCallFragment(call);
    return fragment && { kind, call: fragment };
  }
  if (kind === undefined || kind === null) return typeof delta === 'string' ? { kind: 'answer', delta } : null;
  if (TEXT_KINDS.has(kind)) return typeof delta === 'string' ? { kind, delta } : null;
  return { kind: 'other' };
}

// A tool-call chunk's `tool_call`, checked: {index, id?, name?, arguments}.
function toolCallFragment(call) {
  if (!call || typeof call !== 'object' || !Number.isInteger(call.index) || call.index < 0) return null;
  const args = call.arguments ?? '';
  if (typeof args !== 'string') return null;
  const fragment = { index: call.index, arguments: args };
  if (typeof call.id === 'string' && call.id) fragment.id = call.id;
  if (typeof call.name === 'string' && call.name) fragment.name = call.name;
  return fragment;
}

// The calls with one more fragment: a new index starts a call (kept in index order);
// a known one gets its arguments extended, and an id or name it still lacks.
function withFragment(calls, fragment) {
  const at = calls.findIndex((call) => call.index === fragment.index);
  if (at < 0) return [...calls, fragment].sort((a, b) => a.index - b.index);
  const call = calls[at];
  const next = { ...call, arguments: call.arguments + fragment.arguments };
  if (call.id === undefined && fragment.id !== undefined) next.id = fragment.id;
  if (call.name === undefined && fragment.name !== undefined) next.name = fragment.name;
  return replaceAt(calls, at, next);
}

// The fields of an answer after appending `pieces` (in seq order) at `now`: reasoning,
// answer and refusal text, tool calls, and when the reasoning started and ended (at the
// first piece of anything else).
function appended(message, pieces, now, marks = null) {
  let { content, reasoning, refusal = '', toolCalls = [], thinkingSince, thinkingMs } = message;
  for (const piece of pieces) {
    // Where each chunk begins: what a `retract` of it cuts the answer back to.
    marks?.push([content.length, reasoning.length, refusal.length, toolCalls]);
    if (piece.kind === 'other') continue;
    if (piece.kind === 'reasoning') {
      reasoning += piece.delta;
      thinkingSince ??= now;
      continue;
    }
    if (piece.kind === 'answer') content += piece.delta;
    else if (piece.kind === 'refusal') refusal += piece.delta;
    else toolCalls = withFragment(toolCalls, piece.call);
    if (reasoning !== '' && thinkingMs === undefined) thinkingMs = Math.max(0, now - (thinkingSince ?? now));
  }
  const text = { content, reasoning, refusal, toolCalls };
  if (thinkingSince !== undefined) text.thinkingSince = thinkingSince;
  if (thinkingMs !== undefined) text.thinkingMs = thinkingMs;
  return text;
}

/**
 * Append a chunk in seq order; early chunks wait in `pending`, duplicates and strays are
 * dropped. Reasoning, answer, refusal and tool-call chunks share one seq: a chunk's kind
 * only says what it extends. `now` (ms) times the reasoning.
 */
export function applyChunk(messages, payload, now = Date.now()) {
  const { id, seq, delta, kind, tool_call: call } = payload || {};
  const index = liveIndex(messages, id);
  if (index < 0 || !Number.isInteger(seq)) return messages;
  const piece = pieceOf(kind, delta, call);
  if (piece === null) return messages;
  const message = messages[index];
  if (seq < message.nextSeq || Object.hasOwn(message.pending, seq)) return messages;
  if (seq > message.nextSeq) {
    return replaceAt(messages, index, { ...message, pending: { ...message.pending, [seq]: piece } });
  }
  const pieces = [piece];
  let nextSeq = seq + 1;
  let pending = message.pending;
  if (Object.hasOwn(pending, nextSeq)) {
    pending = { ...pending };
    while (Object.hasOwn(pending, nextSeq)) {
      pieces.push(pending[nextSeq]);
      delete pending[nextSeq];
      nextSeq += 1;
    }
  }
  // Kept from seq 0 on only (a transcript reloaded mid-answer has none before).
  const marks = (message.marks?.length ?? 0) === message.nextSeq ? [...(message.marks ?? [])] : null;
  const text = appended(message, pieces, now, marks);
  if (marks) text.marks = marks;
  const { doneEarly } = message;
  if (doneEarly && nextSeq >= doneEarly.chunks) {
    // The chunks a `done` that came first was waiting for are all in.
    return replaceAt(messages, index, ended({ ...message, ...text, nextSeq, pending }, 'done', doneEarly, now));
  }
  return replaceAt(messages, index, { ...message, ...text, nextSeq, pending });
}

// Chunks still waiting behind a gap when the request ends are appended in seq order:
// showing them beats losing them. (A `done` that counts chunks waits for them instead.)
function drainPending(message, now) {
  const pieces = Object.keys(message.pending)
    .map(Number)
    .sort((a, b) => a - b)
    .map((seq) => message.pending[seq]);
  return { ...appended(message, pieces, now), pending: {} };
}

// How long the answer reasoned, by the server's clock when its `done` says: from the
// first text (reasoning comes first) to the first answer text, or to the end when no
// answer came. The page's own figure counts a dropped connection in.
export function serverThinkingMs(done) {
  const { ttft_ms: first, answer_ttft_ms: answer, total_ms: total } = done?.timing || {};
  if (typeof first !== 'number') return undefined;
  if (typeof answer === 'number') return Math.max(0, answer - first);
  return typeof total === 'number' ? Math.max(0, total - first) : undefined;
}

/**
 * The tool calls of a `done` payload in OpenAI's shape, [{id, type: 'function',
 * function: {name, arguments}}], or null when it has none (or they are malformed).
 */
export function doneToolCalls(done) {
  const calls = done?.tool_calls;
  if (!Array.isArray(calls) || calls.length === 0) return null;
  const valid = calls.every(
    (call) =>
      call &&
      typeof call.id === 'string' &&
      typeof call.function?.name === 'string' &&
      typeof call.function?.arguments === 'string',
  );
  if (!valid) return null;
  return calls.map(({ id, function: { name, arguments: args } }) => ({
    id,
    type: 'function',
    function: { name, arguments: args },
  }));
}

// An answer that has ended: with `done` (status 'done') or an error (status 'error').
// The `done` event's tool calls are the whole calls: they replace the streamed ones.
function ended(message, status, outcome, now) {
  const finished = { ...settled(message), ...drainPending(message, now), status };
  if (status === 'done') {
    finished.done = outcome;
    const calls = doneToolCalls(outcome);
    if (calls) {
      finished.toolCalls = calls.map((call, index) => ({
        index,
        id: call.id,
        name: call.function.name,
        arguments: call.function.arguments,
      }));
    }
  } else {
    finished.error = outcome;
  }
  if (finished.reasoning) {
    const measured = status === 'done' ? serverThinkingMs(outcome) : undefined;
    if (measured !== undefined) finished.thinkingMs = measured;
    else finished.thinkingMs ??= Math.max(0, now - (finished.thinkingSince ?? now));
  }
  return finished;
}

/**
 * Mark a live request finished with the server's `done` payload; a `done` that counts
 * chunks not all here yet waits for them (see noteGaps).
 */
export function applyDone(messages, payload, now = Date.now()) {
  const index = liveIndex(messages, payload && payload.id);
  if (index < 0) return messages;
  const message = messages[index];
  if (Number.isInteger(payload.chunks) && message.nextSeq < payload.chunks) {
    return replaceAt(messages, index, { ...message, doneEarly: payload });
  }
  return replaceAt(messages, index, ended(message, 'done', payload, now));
}

/** Mark a live request failed; errors without an id (a rejected `chat`) change nothing here. */
export function applyError(messages, payload, now = Date.now()) {
  const index = liveIndex(messages, payload && payload.id);
  if (index < 0) return messages;
  const message = messages[index];
  const { code = 'internal', message: text = 'Unknown error', retryable = false } = payload;
  if (message.gapResumes > 0 && RESUME_REFUSALS.has(code)) return messages;
  return replaceAt(messages, index, ended(message, 'error', { code, message: text, retryable }, now));
}

/**
 * The server took back a live answer's chunks from `from_seq` on (its moderation flagged
 * them; its `done`, with finish_reason "content_filter", follows): the answer keeps what
 * came before and is marked `retracted`, for the page to say so in their place.
 */
export function applyRetract(messages, payload) {
  const { id, from_seq: from } = payload || {};
  const index = liveIndex(messages, id);
  if (index < 0 || !Number.isInteger(from) || from < 0) return messages;
  const message = messages[index];
  const pending = Object.fromEntries(Object.entries(message.pending).filter(([seq]) => Number(seq) < from));
  const next = { ...message, pending, retracted: true };
  if (from < message.nextSeq) {
    // Without the chunk's mark (a reloaded tab), all of the text goes.
    const [content, reasoning, refusal, toolCalls] = message.marks?.[from] ?? [0, 0, 0, []];
    next.content = message.content.slice(0, content);
    next.reasoning = message.reasoning.slice(0, reasoning);
    next.refusal = (message.refusal ?? '').slice(0, refusal);
    next.toolCalls = toolCalls;
    next.nextSeq = from;
    if (message.marks) next.marks = message.marks.slice(0, from);
  }
  return replaceAt(messages, index, next);
}

const APPLY = { chunk: applyChunk, done: applyDone, error: applyError, retract: applyRetract };

/**
 * Apply a batch of buffered socket events: [{type: 'chunk'|'done'|'error', payload,
 * receivedAt?}], `receivedAt` being when the event arrived (ms since the epoch, as
 * Date.now()): it times the reasoning.
 */
export function applyEvents(messages, events) {
  let next = messages;
  for (const { type, payload, receivedAt } of events) {
    const apply = APPLY[type];
    if (apply) next = apply(next, payload, receivedAt ?? Date.now());
  }
  return next;
}

/** Fail every request still streaming (the connection dropped, or the page was reloaded). */
export function failStreaming(messages, error) {
  let next = messages;
  for (const message of messages) {
    if (message.role === 'assistant' && message.status === 'streaming') {
      next = applyError(next, { id: message.id, ...error });
    }
  }
  return next;
}

/** Keep the token the `chat` ack carries, for resuming after a dropped connection. */
export function setResumeToken(messages, id, token) {
  const index = liveIndex(messages, id);
  if (index < 0 || typeof token !== 'string' || !token) return messages;
  return replaceAt(messages, index, { ...messages[index], resumeToken: token });
}

/**
 * The connection dropped: live answers that can be resumed wait for the next
 * connection; the others have lost their stream and fail.
 */
export function suspendStreaming(messages, error) {
  let next = messages;
  for (const message of messages) {
    if (message.role !== 'assistant' || message.status !== 'streaming') continue;
    if (message.resumeToken) {
      next = replaceAt(next, indexOfId(next, message.id), { ...message, resuming: true });
    } else {
      next = applyError(next, { id: message.id, ...error });
    }
  }
  return next;
}

/** The `resume` requests to send on a new connection: {id, token, after}. */
export function resumeRequests(messages) {
  return messages
    .filter((m) => m.role === 'assistant' && m.status === 'streaming' && m.resuming && m.resumeToken)
    .map((m) => ({ id: m.id, token: m.resumeToken, after: m.nextSeq - 1 }));
}

/** The server took the resume: chunks after `after` follow on this connection. */
export function markResumed(messages, id) {
  const index = liveIndex(messages, id);
  if (index < 0 || !messages[index].resuming) return messages;
  return replaceAt(messages, index, { ...messages[index], resuming: false });
}

function hasGap(message) {
  return Boolean(message.doneEarly) || Object.keys(message.pending).length > 0;
}

/**
 * Open or close each live answer's gap episode as of `now` (ms): an answer with a hole
 * in seq (chunks held past a missing one, or a `done` waiting for one) gets `gapSince`
 * and `gapResumes`; once whole it loses them. An answer resuming after a reconnection
 * has no episode: that resume fills any hole, and one starts afresh after it.
 */
export function noteGaps(messages, now) {
  let next = messages;
  messages.forEach((message, index) => {
    if (message.role !== 'assistant' || message.status !== 'streaming') return;
    const open = hasGap(message) && !message.resuming;
    if (open && message.gapSince === undefined) {
      next = replaceAt(next, index, { ...message, gapSince: now, gapResumes: 0 });
    } else if (!open && message.gapSince !== undefined) {
      const { gapSince, gapResumes, ...rest } = message;
      next = replaceAt(next, index, rest);
    }
  });
  return next;
}

/** When (ms) the first hole is due to be asked for again, or null when there is none. */
export function nextGapDue(messages) {
  let due = null;
  for (const message of messages) {
    if (message.status === 'streaming' && message.gapSince !== undefined && !message.resuming) {
      const at = message.gapSince + GAP_MS;
      if (due === null || at < due) due = at;
    }
  }
  return due;
}

/** The error an answer ends with when its hole cannot be filled; retrying asks afresh. */
export function lostChunks(message, reason) {
  return {
    code: 'lost_chunks',
    message:
      `Part of the answer (from chunk ${message.nextSeq}) never arrived ` +
      `and could not be fetched again (${reason}).`,
    retryable: true,
  };
}

/**
 * The holes due at `now`: returns the `resume` requests to send ({id, token, after: the
 * last contiguous seq}) and the messages with those noted, or failed with `lost_chunks`
 * when their hole has had GAP_RESUMES resumes already. Without the `chat` ack's token an
 * answer cannot resume yet; the try counts all the same, so a lost ack cannot stall it.
 */
export function takeDueGaps(messages, now) {
  let next = messages;
  const resumes = [];
  messages.forEach((message, index) => {
    if (message.status !== 'streaming' || message.gapSince === undefined || message.resuming) return;
    if (now < message.gapSince + GAP_MS) return;
    if (message.gapResumes >= GAP_RESUMES) {
      const reason = `still missing after ${GAP_RESUMES} resumes, ${GAP_MS / 1000} s apart`;
      next = applyError(next, { id: message.id, ...lostChunks(message, reason) });
      return;
    }
    next = replaceAt(next, index, { ...message, gapSince: now, gapResumes: message.gapResumes + 1 });
    if (message.resumeToken) {
      resumes.push({ id: message.id, token: message.resumeToken, after: message.nextSeq - 1 });
    }
  });
  return { messages: next, resumes };
}

/**
 * A negative ack to a resume sent for a hole: a refusal means the answer cannot be
 * completed; a failure to answer (the server's Redis away?) is left to the next try.
 */
export function failGap(messages, id, error) {
  const index = liveIndex(messages, id);
  if (index < 0 || messages[index].gapSince === undefined || !RESUME_REFUSALS.has(error?.code)) {
    return messages;
  }
  return applyError(messages, { id, ...lostChunks(messages[index], `${error.code}: ${error.message}`) });
}

export function isStreaming(messages) {
  return messages.some((m) => m.role === 'assistant' && m.status === 'streaming');
}

// What the page answers for each tool call it was asked to make: it runs no tools, and
// OpenAI-compatible servers want a `tool` message per call before the next user turn.
export const TOOL_NOT_RUN = 'Not run: this chat page does not run tools.';

/**
 * A tool call's state on its card: 'streaming' while the answer streams, 'called' once
 * `done` gave the whole call, 'incomplete' when the answer ended without it (stopped,
 * failed).
 */
export function toolCallState(message) {
  if (message.status === 'streaming') return 'streaming';
  return message.status === 'done' && doneToolCalls(message.done) ? 'called' : 'incomplete';
}

// The ids of the images the history can carry: those still held in memory, newest first,
// while their data URLs fit in MAX_REQUEST_IMAGE_BYTES (older ones are left out).
function imagesToSend(messages) {
  const ids = new Set();
  let total = 0;
  for (let i = messages.length - 1; i >= 0; i -= 1) {
    for (const image of messages[i].images ?? []) {
      if (typeof image.url !== 'string') continue;
      total += image.url.length;
      if (total > MAX_REQUEST_IMAGE_BYTES) return ids;
      ids.add(image.id);
    }
  }
  return ids;
}

// A user turn's content: its text, or with images OpenAI's parts (text first, then one
// image_url part per image). An image the page no longer holds (reloaded tab, over the
// request's budget) is said in a text part, so the model knows one was there.
function userContent(message, sendable) {
  const images = message.images ?? [];
  if (images.length === 0) return message.content;
  const sent = images.filter((image) => sendable.has(image.id));
  const left = images.length - sent.length;
  const texts = [message.content, left > 0 ? `[${left} image${left > 1 ? 's' : ''} not resent]` : ''].filter(
    (text) => text !== '',
  );
  if (sent.length === 0) return texts.join('\n\n');
  return [
    ...texts.map((text) => ({ type: 'text', text })),
    ...sent.map((image) => ({ type: 'image_url', image_url: { url: image.url } })),
  ];
}

/**
 * The turns to send to the server: every user turn (with its images), and every
 * assistant turn with answer text, a refusal or tool calls. Reasoning never goes back:
 * upstreams refuse it or are told to drop it. An answer whose `done` gave tool calls
 * goes back with them (OpenAI's shape, `content` null when it had no text), followed by
 * a `tool` message per call saying it was not run (TOOL_NOT_RUN), so that the next user
 * turn is valid; tool calls cut short (stopped, failed) are left out, their text kept.
 */
export function historyOf(messages) {
  const sendable = imagesToSend(messages);
  const history = [];
  for (const m of messages) {
    if (m.role === 'user') {
      history.push({ role: 'user', content: userContent(m, sendable) });
      continue;
    }
    if (m.role !== 'assistant') continue;
    const text = m.content !== '' ? m.content : (m.refusal ?? '');
    const calls = m.status === 'done' ? doneToolCalls(m.done) : null;
    if (calls) {
      history.push({ role: 'assistant', content: text === '' ? null : text, tool_calls: calls });
      for (const call of calls) history.push({ role: 'tool', tool_call_id: call.id, content: TOOL_NOT_RUN });
    } else if (text !== '') {
      history.push({ role: 'assistant', content: text });
    }
  }
  return history;
}

/** Remove the last assistant turn (and anything after the last user turn) for a regenerate. */
export function dropLastAnswer(messages) {
  let last = messages.length - 1;
  while (last >= 0 && messages[last].role !== 'user') last -= 1;
  return last < 0 ? messages : messages.slice(0, last + 1);
}

/**
 * Time to first token (of either kind) and to the first answer text, decode speed,
 * reasoning tokens and a word for how the answer ended, from `done`.
 */
export function answerFigures(done) {
  if (!done) return null;
  const timing = done.timing || {};
  const usage = done.usage || {};
  const ttftMs = typeof timing.ttft_ms === 'number' ? timing.ttft_ms : null;
  const answerTtftMs = typeof timing.answer_ttft_ms === 'number' ? timing.answer_ttft_ms : null;
  const totalMs = typeof timing.total_ms === 'number' ? timing.total_ms : null;
  const tokens = typeof usage.completion_tokens === 'number' ? usage.completion_tokens : null;
  const reasoningTokens = Number.isInteger(usage.reasoning_tokens) ? usage.reasoning_tokens : null;
  let tokensPerSecond = null;
  if (tokens !== null && totalMs !== null) {
    // Decode speed: the tokens after the first, over the time after the first.
    const decodeMs = totalMs - (ttftMs ?? 0);
    if (tokens > 1 && ttftMs !== null && decodeMs > 0) {
      tokensPerSecond = ((tokens - 1) * 1000) / decodeMs;
    } else if (totalMs > 0) {
      tokensPerSecond = (tokens * 1000) / totalMs;
    }
  }
  return {
    ttftMs,
    answerTtftMs,
    totalMs,
    tokens,
    reasoningTokens,
    estimated: Boolean(usage.estimated),
    tokensPerSecond,
    model: done.model || null,
    finish: Object.hasOwn(FINISH_WORDS, done.finish_reason)
      ? FINISH_WORDS[done.finish_reason]
      : (done.finish_reason ?? null),
  };
}

const FINISH_WORDS = {
  stop: null,
  length: 'truncated',
  cancelled: 'stopped',
  content_filter: 'filtered',
  tool_calls: 'tool call',
};

// What survives a reload: the turns, their reasoning, finished metadata, and for an
// answer still streaming its text so far, next seq and resume token, to pick it up again.
// Images keep their description, never their data: sessionStorage holds ~5 MB a tab.
export function toStored(messages) {
  return messages.map(({ pending, resuming, doneEarly, gapSince, gapResumes, marks, ...rest }) => {
    if (rest.role === 'user') {
      return rest.images ? { ...rest, images: rest.images.map(({ url, ...described }) => described) } : rest;
    }
    if (rest.status === 'streaming') return rest;
    const { resumeToken, nextSeq, ...finished } = rest;
    return finished;
  });
}

// A stored image's description, without any data: a reloaded tab has not kept it.
function storedImage(image, index) {
  const described = { id: typeof image.id === 'string' ? image.id : `stored-${index}` };
  for (const field of ['name', 'type']) if (typeof image[field] === 'string') described[field] = image[field];
  for (const field of ['width', 'height', 'bytes']) {
    if (Number.isFinite(image[field])) described[field] = image[field];
  }
  return described;
}

export function fromStored(value) {
  if (!Array.isArray(value)) return [];
  const messages = value
    .filter(
      (m) =>
        m &&
        typeof m.id === 'string' &&
        (m.role === 'user' || m.role === 'assistant') &&
        typeof m.content === 'string',
    )
    .map((m) => {
      if (m.role !== 'assistant') {
        const { images, ...user } = m;
        if (!Array.isArray(images)) return user;
        const kept = images.filter((image) => image && typeof image === 'object').map(storedImage);
        return kept.length > 0 ? { ...user, images: kept } : user;
      }
      const message = {
        status: 'done',
        ...m,
        reasoning: typeof m.reasoning === 'string' ? m.reasoning : '',
        refusal: typeof m.refusal === 'string' ? m.refusal : '',
        toolCalls: Array.isArray(m.toolCalls) ? m.toolCalls.map(toolCallFragment).filter(Boolean) : [],
        pending: {},
      };
      for (const field of ['thinkingSince', 'thinkingMs']) {
        if (typeof message[field] !== 'number') delete message[field];
      }
      if (!Number.isInteger(message.nextSeq) || message.nextSeq < 0) {
        // Without a trustworthy seq, a resume could duplicate text: do not try.
        message.nextSeq = 0;
        delete message.resumeToken;
      }
      return message.status === 'streaming' ? { ...message, resuming: true } : message;
    });
  return suspendStreaming(messages, {
    code: 'interrupted',
    message: 'The page was reloaded while this answer was streaming.',
    retryable: true,
  });
}
