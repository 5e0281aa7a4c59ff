// The client's view of a conversation, as pure functions over an array of messages.
// Every function returns the same array when an event changes nothing, and keeps the
// identity of every message it does not touch, so memoized components skip them.
//
// A message: {id, role: 'user'|'assistant', content}
// An assistant message's `content` is its answer text; it also has:
//   reasoning  the reasoning ("thinking") text, from chunks of kind "reasoning"; it comes
//            before the answer, is shown apart from it and never goes back in the history
//   thinkingSince  when (ms) its first reasoning chunk came
//   thinkingMs  how long it reasoned: set when the answer text starts, or when the
//            request ends with none; from the server's `done` timing once that is in
//   status   'streaming' | 'done' | 'error'
//   nextSeq  the seq of the next chunk to append: reasoning and answer chunks share it
//   pending  {[seq]: {delta, kind}} for chunks that arrived ahead of a gap
//   doneEarly  a `done` that came before all the chunks it counts; applied once they are in
//   gapSince, gapResumes  while a seq is missing: when the hole was seen (or last asked
//            for again) in ms, and how many `resume`s went out for it (see noteGaps)
//   done     the server's `done` payload, once finished
//   error    {code, message, retryable}, once failed
//   resumeToken  from the `chat` ack: lets a new connection pick the stream up again
//   resuming     true between losing the connection (or a reload) and the resume ack

export function userMessage(id, content) {
  return { id, role: 'user', content };
}

export function assistantMessage(id) {
  return { id, role: 'assistant', content: '', reasoning: '', status: 'streaming', nextSeq: 0, pending: {} };
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
  const { doneEarly, gapSince, gapResumes, ...rest } = message;
  return rest;
}

// A chunk's kind: no `kind` is answer text (clients that ignore kinds show it all as
// the answer). A kind this page does not know takes its seq and is not shown.
function kindOf(kind) {
  if (kind === undefined || kind === null) return 'answer';
  return kind === 'reasoning' ? 'reasoning' : 'other';
}

// The text fields of an answer after appending `pieces` ({delta, kind}, in seq order)
// at `now`: reasoning text, answer text, and when the reasoning started and ended.
function appended(message, pieces, now) {
  let { content, reasoning, thinkingSince, thinkingMs } = message;
  for (const { delta, kind } of pieces) {
    if (kind === 'reasoning') {
      reasoning += delta;
      thinkingSince ??= now;
    } else if (kind === 'answer') {
      content += delta;
      if (reasoning !== '' && thinkingMs === undefined) thinkingMs = Math.max(0, now - (thinkingSince ?? now));
    }
  }
  const text = { content, reasoning };
  if (thinkingSince !== undefined) text.thinkingSince = thinkingSince;
  if (thinkingMs !== undefined) text.thinkingMs = thinkingMs;
  return text;
}

/**
 * Append a chunk in seq order; early chunks wait in `pending`, duplicates and strays are
 * dropped. Reasoning and answer chunks share one seq: a chunk's kind only says which text
 * it extends. `now` (ms) times the reasoning.
 */
export function applyChunk(messages, payload, now = Date.now()) {
  const { id, seq, delta, kind } = payload || {};
  const index = liveIndex(messages, id);
  if (index < 0 || !Number.isInteger(seq) || typeof delta !== 'string') return messages;
  const message = messages[index];
  if (seq < message.nextSeq || Object.hasOwn(message.pending, seq)) return messages;
  const piece = { delta, kind: kindOf(kind) };
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
  const text = appended(message, pieces, now);
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
function serverThinkingMs(done) {
  const { ttft_ms: first, answer_ttft_ms: answer, total_ms: total } = done?.timing || {};
  if (typeof first !== 'number') return undefined;
  if (typeof answer === 'number') return Math.max(0, answer - first);
  return typeof total === 'number' ? Math.max(0, total - first) : undefined;
}

// An answer that has ended: with `done` (status 'done') or an error (status 'error').
function ended(message, status, outcome, now) {
  const finished = { ...settled(message), ...drainPending(message, now), status };
  if (status === 'done') finished.done = outcome;
  else finished.error = outcome;
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

const APPLY = { chunk: applyChunk, done: applyDone, error: applyError };

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

/**
 * The turns to send to the server: every user turn and every assistant turn with answer
 * text, as {role, content}. Reasoning never goes back: upstreams refuse it or are told
 * to drop it.
 */
export function historyOf(messages) {
  return messages
    .filter((m) => m.role === 'user' || (m.role === 'assistant' && m.content !== ''))
    .map((m) => ({ role: m.role, content: m.content }));
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
export function toStored(messages) {
  return messages.map(({ pending, resuming, doneEarly, gapSince, gapResumes, ...rest }) => {
    if (rest.status === 'streaming') return rest;
    const { resumeToken, nextSeq, ...finished } = rest;
    return finished;
  });
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
      if (m.role !== 'assistant') return m;
      const message = {
        status: 'done',
        ...m,
        reasoning: typeof m.reasoning === 'string' ? m.reasoning : '',
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
