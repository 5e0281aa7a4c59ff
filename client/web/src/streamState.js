// The client's view of a conversation, as pure functions over an array of messages.
// Every function returns the same array when an event changes nothing, and keeps the
// identity of every message it does not touch, so memoized components skip them.
//
// A message: {id, role: 'user'|'assistant', content}
// An assistant message also has:
//   status   'streaming' | 'done' | 'error'
//   nextSeq  the seq of the next chunk to append
//   pending  {[seq]: delta} for chunks that arrived ahead of a gap
//   done     the server's `done` payload, once finished
//   error    {code, message, retryable}, once failed
//   resumeToken  from the `chat` ack: lets a new connection pick the stream up again
//   resuming     true between losing the connection (or a reload) and the resume ack

export function userMessage(id, content) {
  return { id, role: 'user', content };
}

export function assistantMessage(id) {
  return { id, role: 'assistant', content: '', status: 'streaming', nextSeq: 0, pending: {} };
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

/** Append a chunk in seq order; early chunks wait in `pending`, duplicates and strays are dropped. */
export function applyChunk(messages, payload) {
  const { id, seq, delta } = payload || {};
  const index = liveIndex(messages, id);
  if (index < 0 || !Number.isInteger(seq) || typeof delta !== 'string') return messages;
  const message = messages[index];
  if (seq < message.nextSeq || Object.hasOwn(message.pending, seq)) return messages;
  if (seq > message.nextSeq) {
    return replaceAt(messages, index, { ...message, pending: { ...message.pending, [seq]: delta } });
  }
  let content = message.content + delta;
  let nextSeq = seq + 1;
  let pending = message.pending;
  if (Object.hasOwn(pending, nextSeq)) {
    pending = { ...pending };
    while (Object.hasOwn(pending, nextSeq)) {
      content += pending[nextSeq];
      delete pending[nextSeq];
      nextSeq += 1;
    }
  }
  return replaceAt(messages, index, { ...message, content, nextSeq, pending });
}

// Chunks still waiting behind a gap when the request ends are appended in seq order:
// showing them beats losing them, and the server promises no gaps anyway.
function drainPending(message) {
  const seqs = Object.keys(message.pending)
    .map(Number)
    .sort((a, b) => a - b);
  let content = message.content;
  for (const seq of seqs) content += message.pending[seq];
  return { content, pending: {} };
}

/** Mark a live request finished with the server's `done` payload. */
export function applyDone(messages, payload) {
  const index = liveIndex(messages, payload && payload.id);
  if (index < 0) return messages;
  const message = messages[index];
  return replaceAt(messages, index, {
    ...message,
    ...drainPending(message),
    status: 'done',
    done: payload,
  });
}

/** Mark a live request failed; errors without an id (a rejected `chat`) change nothing here. */
export function applyError(messages, payload) {
  const index = liveIndex(messages, payload && payload.id);
  if (index < 0) return messages;
  const message = messages[index];
  const { code = 'internal', message: text = 'Unknown error', retryable = false } = payload;
  return replaceAt(messages, index, {
    ...message,
    ...drainPending(message),
    status: 'error',
    error: { code, message: text, retryable },
  });
}

const APPLY = { chunk: applyChunk, done: applyDone, error: applyError };

/** Apply a batch of buffered socket events: [{type: 'chunk'|'done'|'error', payload}]. */
export function applyEvents(messages, events) {
  let next = messages;
  for (const { type, payload } of events) {
    const apply = APPLY[type];
    if (apply) next = apply(next, payload);
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

export function isStreaming(messages) {
  return messages.some((m) => m.role === 'assistant' && m.status === 'streaming');
}

/** The turns to send to the server: every user turn and every assistant turn with text. */
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

/** Time to first token, decode speed and a word for how the answer ended, from `done`. */
export function answerFigures(done) {
  if (!done) return null;
  const timing = done.timing || {};
  const usage = done.usage || {};
  const ttftMs = typeof timing.ttft_ms === 'number' ? timing.ttft_ms : null;
  const totalMs = typeof timing.total_ms === 'number' ? timing.total_ms : null;
  const tokens = typeof usage.completion_tokens === 'number' ? usage.completion_tokens : null;
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
    totalMs,
    tokens,
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

// What survives a reload: the turns, finished metadata, and for an answer still
// streaming its text so far, next seq and resume token, to pick it up again.
export function toStored(messages) {
  return messages.map(({ pending, resuming, ...rest }) => {
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
      const message = { status: 'done', ...m, pending: {} };
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
