// Tool calls and refusals in the page's stream state: assembled from `chunk` events in
// the one seq space, made whole by `done`, kept over a reload and a resume, and sent back
// in the history so that the next question stays valid for OpenAI-compatible servers.
import { describe, expect, test } from 'vitest';
import {
  applyChunk,
  applyEvents,
  assistantMessage,
  dropLastAnswer,
  fromStored,
  historyOf,
  markResumed,
  noteGaps,
  resumeRequests,
  setResumeToken,
  suspendStreaming,
  takeDueGaps,
  GAP_MS,
  TOOL_NOT_RUN,
  toolCallState,
  toStored,
  userMessage,
} from './streamState.js';
import { formatArguments } from './toolCalls.js';

const started = () => [userMessage('u1', 'Weather in Paris and the time in Rome?'), assistantMessage('a1')];
const say = (seq, delta) => ({ type: 'chunk', payload: { id: 'a1', seq, delta }, receivedAt: seq });
const think = (seq, delta, receivedAt) => ({
  type: 'chunk',
  payload: { id: 'a1', seq, delta, kind: 'reasoning' },
  receivedAt,
});
const refuse = (seq, delta) => ({
  type: 'chunk',
  payload: { id: 'a1', seq, delta, kind: 'refusal' },
  receivedAt: seq,
});
// A tool-call fragment: `call` is {index, id?, name?, arguments}.
const frag = (seq, call, receivedAt = seq) => ({
  type: 'chunk',
  payload: { id: 'a1', seq, kind: 'tool_call', tool_call: call },
  receivedAt,
});
const reload = (messages) => fromStored(JSON.parse(JSON.stringify(toStored(messages))));

const WEATHER = '{"city": "Paris", "unit": "°C"}';
const TIME = '{"tz":"Europe/Rome"}';
// Two calls streamed interleaved after some answer text, arguments cut anywhere
// (inside a key, inside the non-ASCII "°C").
const STREAM = [
  say(0, 'Let me check.'),
  frag(1, { index: 0, id: 'call_w', name: 'get_weather', arguments: '' }),
  frag(2, { index: 1, id: 'call_t', name: 'get_time', arguments: '{"t' }),
  frag(3, { index: 0, arguments: '{"city": "Pa' }),
  frag(4, { index: 1, arguments: 'z":"Europe/Rome"}' }),
  frag(5, { index: 0, arguments: 'ris", "unit": "°' }),
  frag(6, { index: 0, arguments: 'C"}' }),
];
const TOOL_CALLS = [
  { id: 'call_w', type: 'function', function: { name: 'get_weather', arguments: WEATHER } },
  { id: 'call_t', type: 'function', function: { name: 'get_time', arguments: TIME } },
];
const DONE = {
  id: 'a1',
  finish_reason: 'tool_calls',
  tool_calls: TOOL_CALLS,
  usage: { prompt_tokens: 20, completion_tokens: 30, total_tokens: 50, reasoning_tokens: 0, cached_tokens: 0 },
  timing: { ttft_ms: 100, answer_ttft_ms: 100, total_ms: 900 },
  model: 'test-model',
  chunks: 7,
};
const done = (payload = DONE) => ({ type: 'done', payload, receivedAt: 100 });
const ASSEMBLED = [
  { index: 0, id: 'call_w', name: 'get_weather', arguments: WEATHER },
  { index: 1, id: 'call_t', name: 'get_time', arguments: TIME },
];

describe('tool-call chunks', () => {
  test('interleaved calls are assembled per index in seq order, next to the answer text', () => {
    const m = applyEvents(started(), STREAM);
    expect(m[1]).toMatchObject({ content: 'Let me check.', nextSeq: 7, status: 'streaming' });
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
    expect(toolCallState(m[1])).toBe('streaming');
  });

  test('out of order and with a hole: nothing past the hole until it fills', () => {
    const [c0, c1, c2, c3, c4, c5, c6] = STREAM;
    let m = applyEvents(started(), [c0, c1, c5, c4, c2, c6]);
    // seq 3 is missing: call 0 has only its first fragment, call 1 its first.
    expect(m[1].nextSeq).toBe(3);
    expect(m[1].toolCalls).toEqual([
      { index: 0, id: 'call_w', name: 'get_weather', arguments: '' },
      { index: 1, id: 'call_t', name: 'get_time', arguments: '{"t' },
    ]);
    expect(Object.keys(m[1].pending)).toEqual(['4', '5', '6']);
    m = applyEvents(m, [c3]);
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
    expect(m[1].pending).toEqual({});
  });

  test('a call whose index comes second in seq is still listed by index', () => {
    const m = applyEvents(started(), [
      frag(0, { index: 1, id: 'call_b', name: 'b', arguments: '{}' }),
      frag(1, { index: 0, id: 'call_a', name: 'a', arguments: '{}' }),
    ]);
    expect(m[1].toolCalls.map((call) => call.id)).toEqual(['call_a', 'call_b']);
  });

  test('duplicates, applied or pending, never repeat a fragment', () => {
    const [c0, c1, c2, c3, c4, c5, c6] = STREAM;
    const m = applyEvents(started(), [c0, c1, c1, c2, c4, c4, c3, c3, c2, c5, c6, c6, c5]);
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
    expect(m[1].content).toBe('Let me check.');
    expect(applyChunk(m, STREAM[3].payload)).toBe(m);
  });

  test('id and name come from the first fragment that has them; later ones do not replace them', () => {
    const m = applyEvents(started(), [
      frag(0, { index: 0, arguments: '{"a"' }),
      frag(1, { index: 0, id: 'call_1', name: 'first', arguments: ':1' }),
      frag(2, { index: 0, id: 'call_other', name: 'second', arguments: '}' }),
    ]);
    expect(m[1].toolCalls).toEqual([{ index: 0, id: 'call_1', name: 'first', arguments: '{"a":1}' }]);
  });

  test('malformed tool-call chunks are dropped whole: the hole is asked for again', () => {
    const m = applyEvents(started(), [say(0, 'x')]);
    for (const call of [
      undefined,
      null,
      'get_weather',
      { arguments: '{}' },
      { index: -1, arguments: '{}' },
      { index: 0.5, arguments: '{}' },
      { index: '0', arguments: '{}' },
      { index: 0, arguments: { city: 'Paris' } },
    ]) {
      expect(applyChunk(m, { id: 'a1', seq: 1, kind: 'tool_call', tool_call: call })).toBe(m);
    }
    // A fragment without `arguments` is an empty one.
    const n = applyChunk(m, { id: 'a1', seq: 1, kind: 'tool_call', tool_call: { index: 0, id: 'c', name: 'f' } });
    expect(n[1].toolCalls).toEqual([{ index: 0, id: 'c', name: 'f', arguments: '' }]);
  });

  test('a kind this page does not know takes its seq even without a delta', () => {
    const m = applyEvents(started(), [
      say(0, 'A'),
      { type: 'chunk', payload: { id: 'a1', seq: 1, kind: 'audio', audio: { data: 'AAAA' } } },
      say(2, 'B'),
    ]);
    expect(m[1]).toMatchObject({ content: 'AB', nextSeq: 3, toolCalls: [] });
  });

  test('done makes the calls whole: its tool_calls replace what streamed', () => {
    // The stream lost nothing, but the server's `done` is what counts.
    let m = applyEvents(started(), [...STREAM, done()]);
    expect(m[1].status).toBe('done');
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
    expect(toolCallState(m[1])).toBe('called');
    // A page that streamed only part of a call (say, an older transcript) gets it whole.
    m = applyEvents(started(), [...STREAM.slice(0, 3), done({ ...DONE, chunks: 3 })]);
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
  });

  test('a done that counts chunks not here yet waits for the last fragment', () => {
    let m = applyEvents(started(), [...STREAM.slice(0, 6), done()]);
    expect(m[1]).toMatchObject({ status: 'streaming', doneEarly: DONE });
    expect(toolCallState(m[1])).toBe('streaming');
    m = applyEvents(m, [STREAM[6]]);
    expect(m[1].status).toBe('done');
    expect(toolCallState(m[1])).toBe('called');
  });

  test('a call cut short (stopped) is incomplete, its text as it came', () => {
    const stopped = { ...DONE, finish_reason: 'cancelled', chunks: 4 };
    delete stopped.tool_calls;
    const m = applyEvents(started(), [...STREAM.slice(0, 4), done(stopped)]);
    expect(toolCallState(m[1])).toBe('incomplete');
    expect(m[1].toolCalls[0].arguments).toBe('{"city": "Pa');
    const failed = applyEvents(started(), [
      ...STREAM.slice(0, 4),
      { type: 'error', payload: { id: 'a1', code: 'upstream_timeout', message: 'slow', retryable: true } },
    ]);
    expect(toolCallState(failed[1])).toBe('incomplete');
  });

  test('reasoning ends at the first tool call, as at the first answer text', () => {
    const m = applyEvents(started(), [
      think(0, 'I need the weather.', 1000),
      frag(1, { index: 0, id: 'c', name: 'get_weather', arguments: '{}' }, 4000),
    ]);
    expect(m[1]).toMatchObject({ reasoning: 'I need the weather.', content: '', thinkingMs: 3000 });
  });
});

describe('resume in the middle of a call', () => {
  test('a reload mid-arguments keeps the calls so far and resumes after them', () => {
    let m = setResumeToken(applyEvents(started(), STREAM.slice(0, 4)), 'a1', 'tok');
    const reloaded = reload(m);
    expect(reloaded[1]).toMatchObject({ status: 'streaming', resuming: true, nextSeq: 4 });
    expect(reloaded[1].toolCalls).toEqual([
      { index: 0, id: 'call_w', name: 'get_weather', arguments: '{"city": "Pa' },
      { index: 1, id: 'call_t', name: 'get_time', arguments: '{"t' },
    ]);
    expect(resumeRequests(reloaded)).toEqual([{ id: 'a1', token: 'tok', after: 3 }]);
    // The server replays from seq 4; a fragment repeated by the replay is dropped.
    m = applyEvents(markResumed(reloaded, 'a1'), [STREAM[3], ...STREAM.slice(4), done()]);
    expect(m[1]).toMatchObject({ status: 'done', content: 'Let me check.' });
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
  });

  test('a dropped connection mid-arguments: the resume gives the exact rest', () => {
    let m = setResumeToken(applyEvents(started(), STREAM.slice(0, 5)), 'a1', 'tok');
    m = suspendStreaming(m, { code: 'disconnected', message: 'lost', retryable: true });
    expect(resumeRequests(m)).toEqual([{ id: 'a1', token: 'tok', after: 4 }]);
    m = applyEvents(markResumed(m, 'a1'), [...STREAM, done()]);
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
    expect(m[1].status).toBe('done');
  });

  test('a lost fragment on a live connection is asked for from the last contiguous seq', () => {
    let m = setResumeToken(applyEvents(started(), [...STREAM.slice(0, 3), ...STREAM.slice(4)]), 'a1', 'tok');
    m = noteGaps(m, 0);
    const due = takeDueGaps(m, GAP_MS);
    expect(due.resumes).toEqual([{ id: 'a1', token: 'tok', after: 2 }]);
    m = applyEvents(due.messages, STREAM.slice(3));
    expect(m[1].toolCalls).toEqual(ASSEMBLED);
  });

  test('a finished answer reloads with its calls and their state', () => {
    const reloaded = reload(applyEvents(started(), [...STREAM, done()]));
    expect(reloaded[1].toolCalls).toEqual(ASSEMBLED);
    expect(toolCallState(reloaded[1])).toBe('called');
  });

  test('stored calls are checked on the way back in', () => {
    const reloaded = fromStored([
      { id: 'u1', role: 'user', content: 'hi' },
      {
        id: 'a1',
        role: 'assistant',
        content: '',
        status: 'done',
        toolCalls: [{ index: 0, name: 'f', arguments: '{}' }, { index: 'x' }, null, { index: 1, arguments: 7 }],
      },
      { id: 'a2', role: 'assistant', content: 'old transcript', status: 'done' },
    ]);
    expect(reloaded[1].toolCalls).toEqual([{ index: 0, name: 'f', arguments: '{}' }]);
    expect(reloaded[2]).toMatchObject({ toolCalls: [], refusal: '' });
  });
});

describe('refusals', () => {
  test('refusal text is kept apart from the answer, in seq order', () => {
    const m = applyEvents(started(), [refuse(1, 'with that.'), refuse(0, "I can't help ")]);
    expect(m[1]).toMatchObject({ refusal: "I can't help with that.", content: '', nextSeq: 2 });
  });

  test('a refusal goes back as the assistant turn, so the model knows it refused', () => {
    const refused = { ...DONE, finish_reason: 'stop', tool_calls: undefined, chunks: 1 };
    let m = applyEvents(started(), [refuse(0, 'No.'), done(refused)]);
    m = [...m, userMessage('u2', 'Why not?'), assistantMessage('a2')];
    expect(historyOf(m)).toEqual([
      { role: 'user', content: 'Weather in Paris and the time in Rome?' },
      { role: 'assistant', content: 'No.' },
      { role: 'user', content: 'Why not?' },
    ]);
    expect(reload(m.slice(0, 2))[1].refusal).toBe('No.');
  });
});

describe('the history after tool calls', () => {
  test("an answer's tool calls go back in OpenAI's shape, each with a tool message saying it was not run", () => {
    let m = applyEvents(started(), [...STREAM, done()]);
    m = [...m, userMessage('u2', 'Thanks.'), assistantMessage('a2')];
    expect(historyOf(m)).toEqual([
      { role: 'user', content: 'Weather in Paris and the time in Rome?' },
      { role: 'assistant', content: 'Let me check.', tool_calls: TOOL_CALLS },
      { role: 'tool', tool_call_id: 'call_w', content: TOOL_NOT_RUN },
      { role: 'tool', tool_call_id: 'call_t', content: TOOL_NOT_RUN },
      { role: 'user', content: 'Thanks.' },
    ]);
  });

  test('calls without text go back with content null; the tool_calls are exactly the done event’s', () => {
    const onlyCalls = STREAM.slice(1).map(({ payload }, seq) => ({ type: 'chunk', payload: { ...payload, seq } }));
    const extra = { ...DONE, chunks: 6, tool_calls: TOOL_CALLS.map((call) => ({ ...call, extra: 'x' })) };
    let m = applyEvents(started(), [...onlyCalls, done(extra)]);
    m = [...m, userMessage('u2', 'And Berlin?')];
    const [, assistant, ...rest] = historyOf(m);
    expect(assistant).toEqual({ role: 'assistant', content: null, tool_calls: TOOL_CALLS });
    expect(rest.map((turn) => turn.role)).toEqual(['tool', 'tool', 'user']);
    // What goes back survives a reload.
    expect(historyOf(reload(m))).toEqual(historyOf(m));
  });

  test('calls cut short are left out; their text stays', () => {
    const stopped = { ...DONE, finish_reason: 'cancelled', chunks: 4 };
    delete stopped.tool_calls;
    let m = applyEvents(started(), [...STREAM.slice(0, 4), done(stopped)]);
    m = [...m, userMessage('u2', 'Go on.')];
    expect(historyOf(m)).toEqual([
      { role: 'user', content: 'Weather in Paris and the time in Rome?' },
      { role: 'assistant', content: 'Let me check.' },
      { role: 'user', content: 'Go on.' },
    ]);
  });

  test('regenerating an answer with tool calls drops them and their tool messages', () => {
    const m = applyEvents(started(), [...STREAM, done()]);
    expect(historyOf(dropLastAnswer(m))).toEqual([
      { role: 'user', content: 'Weather in Paris and the time in Rome?' },
    ]);
  });
});

describe('formatArguments', () => {
  test('a whole call that parses is pretty-printed', () => {
    expect(formatArguments(WEATHER, true)).toEqual({
      text: '{\n  "city": "Paris",\n  "unit": "°C"\n}',
      json: true,
    });
  });

  test('while streaming, or when it does not parse, the text is shown as it came', () => {
    expect(formatArguments('{"city": "Pa', false)).toEqual({ text: '{"city": "Pa', json: false });
    expect(formatArguments(WEATHER, false)).toEqual({ text: WEATHER, json: false });
    expect(formatArguments('city=Paris', true)).toEqual({ text: 'city=Paris', json: false });
    expect(formatArguments('', true)).toEqual({ text: '', json: false });
  });
});
