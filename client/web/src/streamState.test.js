import { describe, expect, test } from 'vitest';
import {
  answerFigures,
  applyChunk,
  applyDone,
  applyError,
  applyEvents,
  assistantMessage,
  dropLastAnswer,
  failGap,
  failStreaming,
  fromStored,
  GAP_MS,
  GAP_RESUMES,
  historyOf,
  markResumed,
  nextGapDue,
  noteGaps,
  resumeRequests,
  setResumeToken,
  suspendStreaming,
  takeDueGaps,
  toStored,
  userMessage,
} from './streamState.js';

function started(id = 'a1') {
  return [userMessage('u1', 'hello'), assistantMessage(id)];
}

const chunk = (seq, delta, id = 'a1') => ({ type: 'chunk', payload: { id, seq, delta } });

const DONE = {
  id: 'a1',
  finish_reason: 'stop',
  usage: { prompt_tokens: 3, completion_tokens: 41, total_tokens: 44, estimated: false },
  timing: { ttft_ms: 200, total_ms: 1200 },
  model: 'demo',
};

describe('chunks', () => {
  test('chunks in order are appended', () => {
    const m = applyEvents(started(), [chunk(0, 'Hel'), chunk(1, 'lo'), chunk(2, '!')]);
    expect(m[1].content).toBe('Hello!');
    expect(m[1].nextSeq).toBe(3);
  });

  test('out-of-order chunks are held until the gap fills, then applied by seq', () => {
    let m = applyEvents(started(), [chunk(2, 'c'), chunk(1, 'b')]);
    expect(m[1].content).toBe('');
    m = applyChunk(m, { id: 'a1', seq: 0, delta: 'a' });
    expect(m[1].content).toBe('abc');
    expect(m[1].pending).toEqual({});
  });

  test('duplicate chunks are ignored, applied or pending', () => {
    const m = applyEvents(started(), [
      chunk(0, 'a'),
      chunk(0, 'a'),
      chunk(2, 'c'),
      chunk(2, 'X'),
      chunk(1, 'b'),
      chunk(1, 'b'),
    ]);
    expect(m[1].content).toBe('abc');
  });

  test('a duplicate returns the same array, untouched', () => {
    const m = applyChunk(started(), { id: 'a1', seq: 0, delta: 'a' });
    expect(applyChunk(m, { id: 'a1', seq: 0, delta: 'a' })).toBe(m);
  });

  test('a chunk for an unknown id is ignored', () => {
    const m = started();
    expect(applyChunk(m, { id: 'someone-else', seq: 0, delta: 'leak' })).toBe(m);
    expect(applyChunk(m, { id: 'u1', seq: 0, delta: 'not an answer' })).toBe(m);
  });

  test('malformed chunks are ignored', () => {
    const m = started();
    expect(applyChunk(m, { id: 'a1', seq: '0', delta: 'x' })).toBe(m);
    expect(applyChunk(m, { id: 'a1', seq: 0 })).toBe(m);
    expect(applyChunk(m, null)).toBe(m);
  });

  test('only the streaming message changes identity', () => {
    const before = started();
    const after = applyChunk(before, { id: 'a1', seq: 0, delta: 'x' });
    expect(after[0]).toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
  });
});

describe('done and error', () => {
  test('done marks the answer finished and keeps the payload', () => {
    const m = applyEvents(started(), [chunk(0, 'hi'), { type: 'done', payload: DONE }]);
    expect(m[1].status).toBe('done');
    expect(m[1].done.model).toBe('demo');
    expect(m[1].content).toBe('hi');
  });

  test('chunks after done are ignored', () => {
    const m = applyEvents(started(), [chunk(0, 'hi'), { type: 'done', payload: DONE }]);
    expect(applyChunk(m, { id: 'a1', seq: 1, delta: 'late' })).toBe(m);
  });

  test('a second terminal event changes nothing', () => {
    const m = applyDone(started(), DONE);
    expect(applyDone(m, { ...DONE, model: 'other' })).toBe(m);
    expect(applyError(m, { id: 'a1', code: 'internal', message: 'x' })).toBe(m);
  });

  test('done flushes chunks still pending behind a gap, in seq order', () => {
    const m = applyEvents(started(), [chunk(0, 'a'), chunk(3, 'd'), chunk(2, 'c')]);
    const finished = applyDone(m, DONE);
    expect(finished[1].content).toBe('acd');
  });

  test('error marks the answer failed with code and message', () => {
    const m = applyEvents(started(), [
      chunk(0, 'par'),
      {
        type: 'error',
        payload: { id: 'a1', code: 'upstream_timeout', message: 'slow', retryable: true },
      },
    ]);
    expect(m[1].status).toBe('error');
    expect(m[1].error).toEqual({ code: 'upstream_timeout', message: 'slow', retryable: true });
    expect(m[1].content).toBe('par');
  });

  test('an error without an id or for an unknown id is ignored', () => {
    const m = started();
    expect(applyError(m, { code: 'invalid_request', message: 'x' })).toBe(m);
    expect(applyError(m, { id: 'nope', code: 'internal', message: 'x' })).toBe(m);
    expect(applyDone(m, { ...DONE, id: 'nope' })).toBe(m);
  });

  test('failStreaming fails only live answers', () => {
    const m = [...applyDone(started('a1'), DONE), userMessage('u2', 'again'), assistantMessage('a2')];
    const failed = failStreaming(m, { code: 'disconnected', message: 'lost', retryable: true });
    expect(failed[1].status).toBe('done');
    expect(failed[3].status).toBe('error');
    expect(failed[3].error.code).toBe('disconnected');
  });
});

describe('history and storage', () => {
  test('history holds user turns and assistant turns with text', () => {
    let m = applyEvents(started(), [chunk(0, 'hi there'), { type: 'done', payload: DONE }]);
    m = [...m, userMessage('u2', 'more'), assistantMessage('a2')];
    expect(historyOf(m)).toEqual([
      { role: 'user', content: 'hello' },
      { role: 'assistant', content: 'hi there' },
      { role: 'user', content: 'more' },
    ]);
  });

  test('dropLastAnswer keeps everything up to the last user turn', () => {
    const m = applyDone(started(), DONE);
    expect(dropLastAnswer(m)).toEqual([m[0]]);
  });

  test('a finished transcript reloads as it was', () => {
    const m = applyEvents(started(), [chunk(0, 'hi'), { type: 'done', payload: DONE }]);
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m))));
    expect(reloaded[1].status).toBe('done');
    expect(reloaded[1].content).toBe('hi');
    expect(reloaded[1].done).toEqual(DONE);
    expect(fromStored('garbage')).toEqual([]);
  });

  test('an answer cut by a reload resumes after its last chunk when it has a token', () => {
    let m = applyEvents(started(), [chunk(0, 'a'), chunk(1, 'b'), chunk(3, 'd')]);
    m = setResumeToken(m, 'a1', 'tok');
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m))));
    expect(reloaded[1]).toMatchObject({ status: 'streaming', content: 'ab', resuming: true });
    expect(resumeRequests(reloaded)).toEqual([{ id: 'a1', token: 'tok', after: 1 }]);
    // The replay repeats nothing already shown.
    const resumed = applyEvents(markResumed(reloaded, 'a1'), [chunk(2, 'c'), chunk(3, 'd')]);
    expect(resumed[1]).toMatchObject({ content: 'abcd', resuming: false });
  });

  test('an answer cut by a reload without a token is marked interrupted', () => {
    const m = applyChunk(started(), { id: 'a1', seq: 0, delta: 'a' });
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m))));
    expect(reloaded[1].status).toBe('error');
    expect(reloaded[1].error.code).toBe('interrupted');
    expect(resumeRequests(reloaded)).toEqual([]);
  });
});

describe('a dropped connection', () => {
  test('answers with a resume token wait to resume; the others fail', () => {
    let m = [...started('a1'), userMessage('u2', 'x'), assistantMessage('a2')];
    m = setResumeToken(m, 'a2', 'tok2');
    const lost = { code: 'disconnected', message: 'lost', retryable: true };
    const suspended = suspendStreaming(m, lost);
    expect(suspended[1]).toMatchObject({ status: 'error', error: lost });
    expect(suspended[3]).toMatchObject({ status: 'streaming', resuming: true });
    expect(resumeRequests(suspended)).toEqual([{ id: 'a2', token: 'tok2', after: -1 }]);
  });

  test('a resume token is only kept for a live answer', () => {
    const m = applyDone(started(), DONE);
    expect(setResumeToken(m, 'a1', 'tok')).toBe(m);
    expect(setResumeToken(started(), 'a1', '')[1].resumeToken).toBeUndefined();
  });
});

describe('a hole in seq (chunks lost on the way)', () => {
  // An answer with its token, holding chunk 0 and chunk 2: chunk 1 is missing.
  function holed(now = 0) {
    const m = setResumeToken(applyEvents(started(), [chunk(0, 'a'), chunk(2, 'c')]), 'a1', 'tok');
    return noteGaps(m, now);
  }

  test('a done that counts chunks not yet here waits for them, then finishes', () => {
    const done = { ...DONE, chunks: 3 };
    let m = applyEvents(started(), [chunk(0, 'a'), chunk(2, 'c'), { type: 'done', payload: done }]);
    expect(m[1]).toMatchObject({ status: 'streaming', content: 'a', doneEarly: done });
    m = applyChunk(m, { id: 'a1', seq: 1, delta: 'b' });
    expect(m[1]).toMatchObject({ status: 'done', content: 'abc', done });
    expect(m[1].doneEarly).toBeUndefined();
  });

  test('a done waiting for its last chunk is a hole too', () => {
    const done = { ...DONE, chunks: 2 };
    const m = noteGaps(applyEvents(started(), [chunk(0, 'a'), { type: 'done', payload: done }]), 5);
    expect(m[1]).toMatchObject({ status: 'streaming', gapSince: 5, gapResumes: 0 });
    expect(nextGapDue(m)).toBe(5 + GAP_MS);
  });

  test('noteGaps opens an episode when a seq is missing and closes it once filled', () => {
    const m = holed(1000);
    expect(m[1]).toMatchObject({ gapSince: 1000, gapResumes: 0 });
    // The same hole later: nothing changes, its bound does not move.
    expect(noteGaps(m, 1500)).toBe(m);
    const filled = noteGaps(applyChunk(m, { id: 'a1', seq: 1, delta: 'b' }), 1600);
    expect(filled[1].content).toBe('abc');
    expect(filled[1].gapSince).toBeUndefined();
    expect(nextGapDue(filled)).toBeNull();
    expect(noteGaps(started(), 1)).toEqual(started());
  });

  test('a hole that lasts GAP_MS is asked for again from the last contiguous seq', () => {
    const m = holed(0);
    const early = takeDueGaps(m, GAP_MS - 1);
    expect(early.resumes).toEqual([]);
    expect(early.messages).toBe(m);
    const due = takeDueGaps(m, GAP_MS);
    expect(due.resumes).toEqual([{ id: 'a1', token: 'tok', after: 0 }]);
    expect(due.messages[1]).toMatchObject({ status: 'streaming', gapSince: GAP_MS, gapResumes: 1 });
    expect(nextGapDue(due.messages)).toBe(2 * GAP_MS);
  });

  test('the replay fills the hole, repeating nothing', () => {
    const { messages } = takeDueGaps(holed(0), GAP_MS);
    const replayed = noteGaps(applyEvents(messages, [chunk(1, 'b'), chunk(2, 'c'), chunk(3, 'd')]), GAP_MS + 5);
    expect(replayed[1]).toMatchObject({ status: 'streaming', content: 'abcd', nextSeq: 4 });
    expect(replayed[1].gapSince).toBeUndefined();
  });

  test(`a hole still there after ${GAP_RESUMES} resumes ends the answer with a retryable error`, () => {
    let m = holed(0);
    let now = 0;
    const sent = [];
    for (let i = 0; i < GAP_RESUMES; i += 1) {
      now += GAP_MS;
      const due = takeDueGaps(m, now);
      sent.push(...due.resumes);
      m = due.messages;
    }
    expect(sent.map((r) => r.after)).toEqual(Array(GAP_RESUMES).fill(0));
    const last = takeDueGaps(m, now + GAP_MS);
    expect(last.resumes).toEqual([]);
    expect(last.messages[1]).toMatchObject({ status: 'error', error: { code: 'lost_chunks', retryable: true } });
    expect(last.messages[1].error.message).toContain('chunk 1');
    expect(nextGapDue(last.messages)).toBeNull();
  });

  test('without the chat ack token the tries count but no resume is sent', () => {
    let m = noteGaps(applyEvents(started(), [chunk(1, 'b')]), 0);
    for (let i = 1; i <= GAP_RESUMES; i += 1) {
      const due = takeDueGaps(m, i * GAP_MS);
      expect(due.resumes).toEqual([]);
      m = due.messages;
    }
    expect(takeDueGaps(m, (GAP_RESUMES + 1) * GAP_MS).messages[1].status).toBe('error');
  });

  test('a refused resume ends the answer with lost_chunks; its error event alone does not', () => {
    const { messages } = takeDueGaps(holed(0), GAP_MS);
    // The refusal's error event comes first: the negative ack says it again.
    const refusal = { id: 'a1', code: 'resume_denied', message: 'no resumable request' };
    expect(applyEvents(messages, [{ type: 'error', payload: refusal }])).toBe(messages);
    // A failure to answer is left to the next try.
    expect(failGap(messages, 'a1', { code: 'internal', message: 'x' })).toBe(messages);
    expect(failGap(messages, 'a1', undefined)).toBe(messages);
    const failed = failGap(messages, 'a1', { code: 'resume_denied', message: 'no resumable request' });
    expect(failed[1]).toMatchObject({ status: 'error', error: { code: 'lost_chunks', retryable: true } });
    expect(failed[1].error.message).toContain('resume_denied');
  });

  test('a refusal after the hole was filled changes nothing', () => {
    const { messages } = takeDueGaps(holed(0), GAP_MS);
    const filled = noteGaps(applyChunk(messages, { id: 'a1', seq: 1, delta: 'b' }), GAP_MS + 1);
    expect(failGap(filled, 'a1', { code: 'resume_denied', message: 'x' })).toBe(filled);
  });

  test('a server error that is not a resume refusal still ends the answer during a resume', () => {
    const { messages } = takeDueGaps(holed(0), GAP_MS);
    const m = applyError(messages, { id: 'a1', code: 'upstream_timeout', message: 'slow', retryable: true });
    expect(m[1]).toMatchObject({ status: 'error', error: { code: 'upstream_timeout' } });
    expect(m[1].gapSince).toBeUndefined();
  });

  test('while resuming after a reconnection there is no episode; one starts after it', () => {
    const lost = { code: 'disconnected', message: 'lost', retryable: true };
    const away = noteGaps(suspendStreaming(holed(0), lost), 10);
    expect(away[1].gapSince).toBeUndefined();
    expect(nextGapDue(away)).toBeNull();
    expect(takeDueGaps(away, 10 * GAP_MS).resumes).toEqual([]);
    const back = noteGaps(markResumed(away, 'a1'), 500);
    expect(back[1]).toMatchObject({ gapSince: 500, gapResumes: 0 });
  });

  test('the hole bookkeeping is not stored', () => {
    const done = { ...DONE, chunks: 3 };
    const { messages } = takeDueGaps(applyDone(holed(0), done), GAP_MS);
    const [, stored] = toStored(messages);
    expect(stored).not.toHaveProperty('gapSince');
    expect(stored).not.toHaveProperty('gapResumes');
    expect(stored).not.toHaveProperty('doneEarly');
    // A reload resumes after the last contiguous chunk.
    expect(resumeRequests(fromStored(JSON.parse(JSON.stringify(toStored(messages)))))).toEqual([
      { id: 'a1', token: 'tok', after: 0 },
    ]);
  });
});

describe('reasoning and answer chunks (kind)', () => {
  const think = (seq, delta, receivedAt) => ({
    type: 'chunk',
    payload: { id: 'a1', seq, delta, kind: 'reasoning' },
    receivedAt,
  });
  const say = (seq, delta, receivedAt) => ({ type: 'chunk', payload: { id: 'a1', seq, delta }, receivedAt });
  const REASONED = {
    ...DONE,
    chunks: 4,
    usage: { ...DONE.usage, reasoning_tokens: 30 },
    timing: { ttft_ms: 400, answer_ttft_ms: 12_400, total_ms: 13_000 },
  };

  test('reasoning and answer text are kept apart, in seq order, and the reasoning is timed', () => {
    const m = applyEvents(started(), [
      think(0, 'Let me ', 1000),
      think(1, 'see.', 2000),
      say(2, 'It is ', 9000),
      say(3, '42.', 9500),
    ]);
    expect(m[1]).toMatchObject({
      reasoning: 'Let me see.',
      content: 'It is 42.',
      nextSeq: 4,
      thinkingSince: 1000,
      thinkingMs: 8000,
      status: 'streaming',
    });
  });

  test('while it reasons there is no thinking time yet, and no answer text', () => {
    const m = applyEvents(started(), [think(0, 'Hmm', 1000), think(1, '…', 1500)]);
    expect(m[1]).toMatchObject({ reasoning: 'Hmm…', content: '', thinkingSince: 1000 });
    expect(m[1].thinkingMs).toBeUndefined();
  });

  test('an answer without reasoning has neither reasoning nor a thinking time', () => {
    const m = applyEvents(started(), [say(0, 'Hi', 5), { type: 'done', payload: DONE, receivedAt: 6 }]);
    expect(m[1]).toMatchObject({ reasoning: '', content: 'Hi', status: 'done' });
    expect(m[1].thinkingSince).toBeUndefined();
    expect(m[1].thinkingMs).toBeUndefined();
  });

  test('out-of-order chunks of both kinds wait for the gap, then apply by seq', () => {
    let m = applyEvents(started(), [think(0, 'a', 100), say(3, 'D', 300), say(2, 'C', 250)]);
    expect(m[1]).toMatchObject({ reasoning: 'a', content: '', nextSeq: 1 });
    expect(Object.keys(m[1].pending)).toEqual(['2', '3']);
    m = applyChunk(m, { id: 'a1', seq: 1, delta: 'b', kind: 'reasoning' }, 400);
    // The switch to the answer is timed when it is applied, not when it arrived early.
    expect(m[1]).toMatchObject({ reasoning: 'ab', content: 'CD', nextSeq: 4, pending: {}, thinkingMs: 300 });
  });

  test('a duplicate is dropped whatever its kind says', () => {
    const m = applyEvents(started(), [think(0, 'a', 1), think(0, 'a', 2), say(0, 'X', 3), say(1, 'B', 4)]);
    expect(applyChunk(m, { id: 'a1', seq: 1, delta: 'B' })).toBe(m);
    expect(applyChunk(m, { id: 'a1', seq: 0, delta: 'a', kind: 'reasoning' })).toBe(m);
    const held = applyEvents(m, [think(3, 'late', 5), say(3, 'dup', 6), say(2, 'C', 7)]);
    expect(held[1]).toMatchObject({ reasoning: 'alate', content: 'BC', nextSeq: 4 });
  });

  test('reasoning after the answer started still goes to the reasoning, timing unchanged', () => {
    const m = applyEvents(started(), [think(0, 'a', 0), say(1, 'B', 1000), think(2, 'c', 2000), say(3, 'D', 3000)]);
    expect(m[1]).toMatchObject({ reasoning: 'ac', content: 'BD', thinkingMs: 1000 });
  });

  test('a kind this page does not know takes its seq and is not shown', () => {
    const m = applyEvents(started(), [
      say(0, 'A', 1),
      { type: 'chunk', payload: { id: 'a1', seq: 1, delta: '{"x":1}', kind: 'audio' }, receivedAt: 2 },
      say(2, 'B', 3),
    ]);
    expect(m[1]).toMatchObject({ content: 'AB', reasoning: '', nextSeq: 3 });
    // kind: null is no kind: answer text.
    const n = applyChunk(started(), { id: 'a1', seq: 0, delta: 'x', kind: null });
    expect(n[1].content).toBe('x');
  });

  test("done takes the thinking time from the server's timing", () => {
    const m = applyEvents(started(), [
      think(0, 'a', 0),
      think(1, 'b', 500),
      say(2, 'C', 14_000), // the connection was slow: the page's clock says 14 s
      say(3, 'D', 14_100),
      { type: 'done', payload: REASONED, receivedAt: 14_200 },
    ]);
    expect(m[1]).toMatchObject({ status: 'done', reasoning: 'ab', content: 'CD', thinkingMs: 12_000 });
  });

  test('a reasoning-only answer (cut by max_tokens) keeps its reasoning and sends nothing back', () => {
    const cut = {
      ...DONE,
      finish_reason: 'length',
      chunks: 2,
      usage: { ...DONE.usage, reasoning_tokens: 41 },
      timing: { ttft_ms: 400, answer_ttft_ms: null, total_ms: 5400 },
    };
    let m = applyEvents(started(), [
      think(0, 'First, ', 100),
      think(1, 'consider…', 200),
      { type: 'done', payload: cut, receivedAt: 5500 },
    ]);
    expect(m[1]).toMatchObject({ status: 'done', content: '', reasoning: 'First, consider…', thinkingMs: 5000 });
    expect(answerFigures(m[1].done)).toMatchObject({ finish: 'truncated', reasoningTokens: 41, answerTtftMs: null });
    m = [...m, userMessage('u2', 'go on'), assistantMessage('a2')];
    expect(historyOf(m)).toEqual([
      { role: 'user', content: 'hello' },
      { role: 'user', content: 'go on' },
    ]);
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m.slice(0, 2)))));
    expect(reloaded[1]).toMatchObject({ status: 'done', content: '', reasoning: 'First, consider…', thinkingMs: 5000 });
  });

  test('a reasoning-only answer without server timing is timed to its end by the page', () => {
    const done = { id: 'a1', finish_reason: 'length', usage: {}, timing: {}, model: 'demo-reasoning' };
    const m = applyEvents(started(), [think(0, 'a', 1000), { type: 'done', payload: done, receivedAt: 4000 }]);
    expect(m[1].thinkingMs).toBe(3000);
  });

  test('an error while it reasons ends the thinking time; the reasoning stays', () => {
    const m = applyEvents(started(), [
      think(0, 'a', 1000),
      {
        type: 'error',
        payload: { id: 'a1', code: 'upstream_timeout', message: 'slow', retryable: true },
        receivedAt: 3500,
      },
    ]);
    expect(m[1]).toMatchObject({ status: 'error', reasoning: 'a', thinkingMs: 2500 });
  });

  test('stopped while it reasons: cancelled, timed by the server to its end', () => {
    const stopped = {
      ...DONE,
      finish_reason: 'cancelled',
      chunks: 1,
      timing: { ttft_ms: 300, answer_ttft_ms: null, total_ms: 2300 },
    };
    const m = applyEvents(started(), [think(0, 'a', 0), { type: 'done', payload: stopped, receivedAt: 9000 }]);
    expect(m[1]).toMatchObject({ status: 'done', reasoning: 'a', content: '', thinkingMs: 2000 });
  });

  test('the history carries the answer text only, never the reasoning', () => {
    let m = applyEvents(started(), [
      think(0, 'secret plan', 0),
      say(1, 'The answer.', 10),
      { type: 'done', payload: { ...DONE, chunks: 2 }, receivedAt: 20 },
    ]);
    m = [...m, userMessage('u2', 'why?'), assistantMessage('a2')];
    const history = historyOf(m);
    expect(history).toEqual([
      { role: 'user', content: 'hello' },
      { role: 'assistant', content: 'The answer.' },
      { role: 'user', content: 'why?' },
    ]);
    expect(JSON.stringify(history)).not.toContain('secret');
  });

  test('a reload in the middle of the reasoning resumes it, then the answer follows', () => {
    let m = applyEvents(started(), [think(0, 'Let ', 1000), think(1, 'me ', 1100), think(3, 'think', 1300)]);
    m = setResumeToken(m, 'a1', 'tok');
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m))));
    expect(reloaded[1]).toMatchObject({
      status: 'streaming',
      resuming: true,
      reasoning: 'Let me ',
      content: '',
      thinkingSince: 1000,
    });
    expect(resumeRequests(reloaded)).toEqual([{ id: 'a1', token: 'tok', after: 1 }]);
    const resumed = applyEvents(markResumed(reloaded, 'a1'), [
      think(1, 'me ', 5000), // replayed again: dropped by seq
      think(2, 'I ', 5000),
      think(3, 'think', 5000),
      say(4, 'Yes.', 6000),
    ]);
    expect(resumed[1]).toMatchObject({
      reasoning: 'Let me I think',
      content: 'Yes.',
      nextSeq: 5,
      thinkingSince: 1000,
      thinkingMs: 5000,
    });
  });

  test('a reload right at the switch from reasoning to answer repeats and loses nothing', () => {
    let m = applyEvents(started(), [think(0, 'a', 0), think(1, 'b', 100), say(2, 'C', 900)]);
    m = setResumeToken(m, 'a1', 'tok');
    const reloaded = fromStored(JSON.parse(JSON.stringify(toStored(m))));
    expect(reloaded[1]).toMatchObject({ reasoning: 'ab', content: 'C', thinkingMs: 900 });
    expect(resumeRequests(reloaded)).toEqual([{ id: 'a1', token: 'tok', after: 2 }]);
    const resumed = applyEvents(markResumed(reloaded, 'a1'), [say(2, 'C', 3000), say(3, 'D', 3000)]);
    expect(resumed[1]).toMatchObject({ reasoning: 'ab', content: 'CD', thinkingMs: 900 });
  });

  test('a connection dropped before the answer began: the resume brings the switch', () => {
    const lost = { code: 'disconnected', message: 'lost', retryable: true };
    let m = setResumeToken(applyEvents(started(), [think(0, 'a', 0), think(1, 'b', 10)]), 'a1', 'tok');
    m = suspendStreaming(m, lost);
    expect(resumeRequests(m)).toEqual([{ id: 'a1', token: 'tok', after: 1 }]);
    m = applyEvents(markResumed(m, 'a1'), [
      think(0, 'a', 2000),
      think(1, 'b', 2000),
      say(2, 'C', 2000),
      { type: 'done', payload: { ...REASONED, chunks: 3 }, receivedAt: 2001 },
    ]);
    expect(m[1]).toMatchObject({ status: 'done', reasoning: 'ab', content: 'C', thinkingMs: 12_000 });
  });

  test('a hole across the switch is asked for from the last contiguous seq, of either kind', () => {
    let m = setResumeToken(applyEvents(started(), [think(0, 'a', 0), say(2, 'C', 10)]), 'a1', 'tok');
    m = noteGaps(m, 0);
    const due = takeDueGaps(m, GAP_MS);
    expect(due.resumes).toEqual([{ id: 'a1', token: 'tok', after: 0 }]);
    const filled = noteGaps(
      applyEvents(due.messages, [think(1, 'b', GAP_MS + 1), say(2, 'C', GAP_MS + 1)]),
      GAP_MS + 2,
    );
    expect(filled[1]).toMatchObject({ reasoning: 'ab', content: 'C', nextSeq: 3 });
    expect(filled[1].gapSince).toBeUndefined();
  });

  test('a done that counts chunks not yet here waits for the last answer chunk', () => {
    let m = applyEvents(started(), [
      think(0, 'a', 0),
      think(1, 'b', 1),
      say(3, 'D', 2),
      { type: 'done', payload: REASONED, receivedAt: 3 },
    ]);
    expect(m[1]).toMatchObject({ status: 'streaming', doneEarly: REASONED });
    m = applyChunk(m, { id: 'a1', seq: 2, delta: 'C' }, 4);
    expect(m[1]).toMatchObject({ status: 'done', reasoning: 'ab', content: 'CD', thinkingMs: 12_000 });
  });

  test('an older stored transcript without reasoning loads with none', () => {
    const reloaded = fromStored([
      { id: 'u1', role: 'user', content: 'hi' },
      { id: 'a1', role: 'assistant', content: 'hello', status: 'done', thinkingMs: 'soon' },
    ]);
    expect(reloaded[1].reasoning).toBe('');
    expect(reloaded[1]).not.toHaveProperty('thinkingMs');
  });
});

describe('answerFigures', () => {
  test('ttft, decode speed, model and finish word come from done', () => {
    const f = answerFigures(DONE);
    expect(f.ttftMs).toBe(200);
    expect(f.tokensPerSecond).toBeCloseTo(40);
    expect(f.model).toBe('demo');
    expect(f.finish).toBeNull();
  });

  test('length reads as truncated and cancelled as stopped', () => {
    expect(answerFigures({ ...DONE, finish_reason: 'length' }).finish).toBe('truncated');
    expect(answerFigures({ ...DONE, finish_reason: 'cancelled' }).finish).toBe('stopped');
  });

  test('reasoning tokens and time to the first answer text, when the server sends them', () => {
    const f = answerFigures({
      ...DONE,
      usage: { ...DONE.usage, reasoning_tokens: 120 },
      timing: { ttft_ms: 300, answer_ttft_ms: 9300, total_ms: 10_300 },
    });
    expect(f).toMatchObject({ reasoningTokens: 120, answerTtftMs: 9300, ttftMs: 300 });
    expect(answerFigures(DONE)).toMatchObject({ reasoningTokens: null, answerTtftMs: null });
  });

  test('no text produced: null ttft, no speed', () => {
    const f = answerFigures({
      ...DONE,
      usage: { completion_tokens: 0 },
      timing: { ttft_ms: null, total_ms: 50 },
    });
    expect(f.ttftMs).toBeNull();
    expect(f.tokensPerSecond).toBe(0);
  });
});
