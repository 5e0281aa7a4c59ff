import { describe, expect, test } from 'vitest';
import { pathTo, switchBranch } from './branches.js';
import {
  acknowledge,
  applySocketEvents,
  failedLoad,
  fromServerMessage,
  fromSession,
  mergeServer,
  newConversation,
  prepareEdit,
  prepareRegenerate,
  prepareSend,
  storedConversation,
  storedIdOf,
  toSession,
  viewOf,
} from './conversationState.js';
import { TOOL_NOT_RUN, applyError } from './streamState.js';

const T = '2026-03-15T10:00:00+00:00';

// Messages as GET /api/conversations/{id} lists them.
function serverUser(id, parent_id, content) {
  return { id, parent_id, role: 'user', content, created_at: T };
}
function serverAnswer(id, parent_id, content, fields = {}) {
  return {
    id,
    parent_id,
    role: 'assistant',
    content,
    reasoning: null,
    tool_calls: null,
    tool_call_id: null,
    finish_reason: 'stop',
    usage: { completion_tokens: 3 },
    timing: { ttft_ms: 100, total_ms: 400 },
    model: 'demo',
    error: null,
    created_at: T,
    ...fields,
  };
}
function serverCopy(id, messages, fields = {}) {
  return {
    id,
    title: 'Tides',
    model: 'demo',
    created_at: T,
    updated_at: T,
    current_leaf_id: messages.length ? messages[messages.length - 1].id : null,
    messages,
    ...fields,
  };
}

// A stored conversation as the page holds it once fetched: u1 → a1.
function opened() {
  const data = serverCopy('c1', [serverUser('u1', null, 'Why tides?'), serverAnswer('a1', 'u1', 'The moon.')]);
  return mergeServer(storedConversation('c1'), data, { keepLeaf: false });
}

const texts = (conversation) => viewOf(conversation).shown.map((m) => m.content);
const ids = { requestId: 'r1', messageId: 'q1' };

describe("the server's messages", () => {
  test('a question with images: its text, and only images of this site or data URLs', () => {
    const message = fromServerMessage(
      serverUser('u1', 'a0', [
        { type: 'text', text: 'What is this?' },
        { type: 'image_url', image_url: { url: '/api/blobs/abc123' } },
        { type: 'image_url', image_url: { url: 'https://elsewhere.example/cat.png' } },
      ]),
    );
    expect(message).toEqual({
      id: 'u1',
      parentId: 'a0',
      role: 'user',
      content: 'What is this?',
      images: [
        { id: 'u1:0', name: 'image', url: '/api/blobs/abc123' },
        { id: 'u1:1', name: 'image' },
      ],
    });
  });

  test('an answer: text, reasoning timed by the server, tool calls, its done figures', () => {
    const calls = [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }];
    const message = fromServerMessage(
      serverAnswer('a1', 'u1', 'Checking.', {
        reasoning: 'plan',
        tool_calls: calls,
        finish_reason: 'tool_calls',
        timing: { ttft_ms: 100, answer_ttft_ms: 2100, total_ms: 2500 },
      }),
    );
    expect(message).toMatchObject({
      id: 'a1',
      parentId: 'u1',
      role: 'assistant',
      content: 'Checking.',
      reasoning: 'plan',
      thinkingMs: 2000,
      status: 'done',
      toolCalls: [{ index: 0, id: 'call_1', name: 'get_weather', arguments: '{"city":"Oslo"}' }],
      done: { finish_reason: 'tool_calls', model: 'demo', tool_calls: calls, usage: { completion_tokens: 3 } },
    });
  });

  test('an answer that failed keeps its partial text and its error; a refusal part is a refusal', () => {
    const failed = fromServerMessage(
      serverAnswer('a1', 'u1', 'Half', { finish_reason: 'error', error: { code: 'upstream_error', message: 'boom' } }),
    );
    expect(failed).toMatchObject({
      status: 'error',
      content: 'Half',
      error: { code: 'upstream_error', message: 'boom', retryable: false },
    });
    expect(failed.done).toBeUndefined();
    const refused = fromServerMessage(serverAnswer('a2', 'u1', [{ type: 'refusal', refusal: 'No.' }]));
    expect([refused.content, refused.refusal]).toEqual(['', 'No.']);
  });

  test('a tool result is held (and not shown); an unknown role or no id is dropped', () => {
    expect(fromServerMessage({ id: 't1', parent_id: 'a1', role: 'tool', content: 'ok', tool_call_id: 'c' })).toEqual({
      id: 't1',
      parentId: 'a1',
      role: 'tool',
      content: 'ok',
      toolCallId: 'c',
    });
    expect(fromServerMessage({ id: 's', role: 'system', content: 'x' })).toBeNull();
    expect(fromServerMessage({ role: 'user', content: 'x' })).toBeNull();
  });
});

describe('asking', () => {
  test('a new chat sends only its question as `message`, no conversation yet', () => {
    const { conversation, request, sentIds } = prepareSend(newConversation('d1'), 'Hello', [], ids);
    expect(request).toEqual({ id: 'r1', message: 'Hello' });
    expect(sentIds).toEqual(['q1']);
    expect(conversation.leafId).toBe('r1');
    expect(viewOf(conversation).shown.map((m) => [m.id, m.role, m.parentId, m.status])).toEqual([
      ['q1', 'user', null, undefined],
      ['r1', 'assistant', 'q1', 'streaming'],
    ]);
  });

  test('a stored conversation is continued after the last message in view, with only the new one', () => {
    const { request, sentIds } = prepareSend(opened(), 'And the sun?', [], ids);
    expect(request).toEqual({ id: 'r1', conversation_id: 'c1', parent_id: 'a1', message: 'And the sun?' });
    expect(sentIds).toEqual(['q1']);
  });

  test('on another branch, the parent is the end of the branch in view', () => {
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Why tides?'),
      serverAnswer('a1', 'u1', 'The moon.'),
      serverAnswer('a1b', 'u1', 'Gravity.'),
    ]);
    const conversation = { ...mergeServer(storedConversation('c1'), data), leafId: 'a1' };
    expect(prepareSend(conversation, 'More', [], ids).request.parent_id).toBe('a1');
  });

  test('images go as content parts', () => {
    const image = { id: 'i1', name: 'a.png', type: 'image/png', url: 'data:image/png;base64,AAAA' };
    const { request } = prepareSend(opened(), 'Look', [image], ids);
    expect(request.messages).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'Look' },
          { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } },
        ],
      },
    ]);
  });

  test("after an answer's tool calls, the page's tool results go before the question", () => {
    const calls = [
      { id: 'call_1', type: 'function', function: { name: 'f', arguments: '{}' } },
      { id: 'call_2', type: 'function', function: { name: 'g', arguments: '{}' } },
    ];
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Do it'),
      serverAnswer('a1', 'u1', '', { tool_calls: calls, finish_reason: 'tool_calls' }),
    ]);
    const { request, sentIds } = prepareSend(mergeServer(storedConversation('c1'), data), 'Thanks', [], ids);
    expect(request.parent_id).toBe('a1');
    expect(request.messages).toEqual([
      { role: 'tool', tool_call_id: 'call_1', content: TOOL_NOT_RUN },
      { role: 'tool', tool_call_id: 'call_2', content: TOOL_NOT_RUN },
      { role: 'user', content: 'Thanks' },
    ]);
    expect(sentIds).toEqual([null, null, 'q1']);
  });

  test('a question the server refused goes again with the next one, after the last stored message', () => {
    let { conversation } = prepareSend(opened(), 'Refused one', [], ids);
    conversation = { ...conversation, messages: applyError(conversation.messages, { id: 'r1', code: 'rate_limited' }) };
    const next = prepareSend(conversation, 'Next one', [], { requestId: 'r2', messageId: 'q2' });
    expect(next.request).toEqual({
      id: 'r2',
      conversation_id: 'c1',
      parent_id: 'a1',
      messages: [
        { role: 'user', content: 'Refused one' },
        { role: 'user', content: 'Next one' },
      ],
    });
    expect(next.sentIds).toEqual(['q1', 'q2']);
  });
});

describe('regenerate and edit make branches', () => {
  test('regenerate asks again for the same question: parent_id, no message', () => {
    const { conversation, request, sentIds } = prepareRegenerate(opened(), 'a1', 'r2');
    expect(request).toEqual({ id: 'r2', conversation_id: 'c1', parent_id: 'u1' });
    expect(sentIds).toEqual([]);
    const { shown, positions } = viewOf(conversation);
    expect(shown.map((m) => m.id)).toEqual(['u1', 'r2']);
    expect(positions.get('r2')).toEqual({ index: 2, count: 2 });
    // The earlier answer is one click away, as it was.
    expect(texts({ ...conversation, leafId: switchBranch(conversation.messages, 'r2', -1) })).toEqual([
      'Why tides?',
      'The moon.',
    ]);
  });

  test('a retry replaces a failed attempt the store never kept', () => {
    let { conversation } = prepareSend(newConversation('d1'), 'x'.repeat(10), [], ids);
    conversation = {
      ...conversation,
      messages: applyError(conversation.messages, { id: 'r1', code: 'invalid_request', message: 'too long' }),
    };
    const retry = prepareRegenerate(conversation, 'r1', 'r2');
    expect(retry.request).toEqual({ id: 'r2', message: 'x'.repeat(10) });
    expect(retry.conversation.messages.map((m) => m.id)).toEqual(['q1', 'r2']);
    expect(viewOf(retry.conversation).positions.size).toBe(0);
  });

  test('a stored answer that failed stays beside its retry', () => {
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Q'),
      serverAnswer('a1', 'u1', 'Ha', { error: { code: 'upstream_error', message: 'cut' } }),
    ]);
    const { conversation } = prepareRegenerate(mergeServer(storedConversation('c1'), data), 'a1', 'r2');
    expect(viewOf(conversation).positions.get('r2')).toEqual({ index: 2, count: 2 });
  });

  test('an edit is a new question beside the old one, under the same parent', () => {
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Why tides?'),
      serverAnswer('a1', 'u1', 'The moon.'),
      serverUser('u2', 'a1', 'And the sun?'),
      serverAnswer('a2', 'u2', 'Less so.'),
    ]);
    const conversation = mergeServer(storedConversation('c1'), data);
    const later = prepareEdit(conversation, 'u2', 'And the wind?', ids);
    expect(later.request).toEqual({ id: 'r1', conversation_id: 'c1', parent_id: 'a1', message: 'And the wind?' });
    expect(texts(later.conversation)).toEqual(['Why tides?', 'The moon.', 'And the wind?', '']);
    expect(viewOf(later.conversation).positions.get('q1')).toEqual({ index: 2, count: 2 });
    // The first question edited: a new root.
    const first = prepareEdit(conversation, 'u1', 'Why waves?', ids);
    expect(first.request).toEqual({ id: 'r1', conversation_id: 'c1', parent_id: null, message: 'Why waves?' });
    expect(prepareEdit(conversation, 'a1', 'x', ids)).toBeNull();
  });
});

describe('the ack, the events and the stored copy', () => {
  test('the ack names the conversation, the question and the answer to come', () => {
    const { conversation, sentIds } = prepareSend(newConversation('d1'), 'Hello', [], ids);
    const ack = { ok: true, id: 'r1', resume_token: 'tok', conversation_id: 'c9', message_ids: ['s1'], answer_id: 's2' };
    const acked = acknowledge(conversation, 'r1', ack, sentIds);
    expect([acked.key, acked.id, acked.status, acked.leafId]).toEqual(['d1', 'c9', 'ready', 'r1']);
    const [question, answer] = acked.messages;
    expect([question.id, question.sent, answer.parentId, answer.answerId, answer.resumeToken]).toEqual([
      's1',
      true,
      's1',
      's2',
      'tok',
    ]);
    expect(storedIdOf(question)).toBe('s1');
    // Not yet written: the answer is stored once it ends.
    expect(storedIdOf(answer)).toBeNull();
  });

  test('an ack without a conversation (the server stores nothing): only the resume token', () => {
    const { conversation, sentIds } = prepareSend(newConversation('d1'), 'Hello', [], ids);
    const acked = acknowledge(conversation, 'r1', { ok: true, resume_token: 'tok' }, sentIds);
    expect(acked.id).toBeNull();
    expect(acked.messages.map((m) => m.id)).toEqual(['q1', 'r1']);
    expect(acked.messages[1].resumeToken).toBe('tok');
  });

  test('events go to the conversation holding their answer; `done` says the store has it', () => {
    const one = prepareSend(opened(), 'A?', [], { requestId: 'rA', messageId: 'qA' }).conversation;
    const two = prepareSend({ ...newConversation('d2'), id: 'c2' }, 'B?', [], {
      requestId: 'rB',
      messageId: 'qB',
    }).conversation;
    const state = { viewKey: 'c1', conversations: { c1: one, d2: two } };
    const { state: next, stored } = applySocketEvents(state, [
      { type: 'chunk', payload: { id: 'rB', seq: 0, delta: 'Bee' } },
      { type: 'chunk', payload: { id: 'rA', seq: 0, delta: 'Ay' } },
      { type: 'done', payload: { id: 'rA', finish_reason: 'stop', chunks: 1, conversation_id: 'c1', answer_id: 'sA' } },
      { type: 'error', payload: { id: 'rB', code: 'history_unavailable', message: 'not saved', answer_id: 'sB' } },
      { type: 'chunk', payload: { id: 'elsewhere', seq: 0, delta: 'x' } },
    ]);
    const a = next.conversations.c1.messages.find((m) => m.id === 'rA');
    const b = next.conversations.d2.messages.find((m) => m.id === 'rB');
    expect([a.content, a.status, a.saved, storedIdOf(a)]).toEqual(['Ay', 'done', true, 'sA']);
    expect([b.content, b.status, b.saved, storedIdOf(b)]).toEqual(['Bee', 'error', false, null]);
    expect(stored).toEqual([{ key: 'c1', id: 'c1' }]);
  });

  test('the stored answer replaces the streamed one, and the view follows it', () => {
    let { conversation } = prepareRegenerate(opened(), 'a1', 'r2');
    conversation = acknowledge(conversation, 'r2', { ok: true, conversation_id: 'c1', answer_id: 's2' }, []);
    const { state } = applySocketEvents({ viewKey: 'c1', conversations: { c1: conversation } }, [
      { type: 'chunk', payload: { id: 'r2', seq: 0, delta: 'Gravity.' } },
      { type: 'done', payload: { id: 'r2', finish_reason: 'stop', chunks: 1, conversation_id: 'c1', answer_id: 's2' } },
    ]);
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Why tides?'),
      serverAnswer('a1', 'u1', 'The moon.'),
      serverAnswer('s2', 'u1', 'Gravity.'),
    ]);
    const merged = mergeServer(state.conversations.c1, data);
    expect(merged.leafId).toBe('s2');
    expect(merged.messages.map((m) => m.id)).toEqual(['u1', 'a1', 's2']);
    expect(texts(merged)).toEqual(['Why tides?', 'Gravity.']);
    expect(viewOf(merged).positions.get('s2')).toEqual({ index: 2, count: 2 });
  });

  test("the page's live answer and unacknowledged question stay until the store has them", () => {
    const { conversation } = prepareSend(opened(), 'Next?', [], ids);
    // Fetched before the chat was acknowledged: the store has nothing new yet.
    const data = serverCopy('c1', [serverUser('u1', null, 'Why tides?'), serverAnswer('a1', 'u1', 'The moon.')]);
    const merged = mergeServer(conversation, data);
    expect(merged.messages.map((m) => m.id)).toEqual(['u1', 'a1', 'q1', 'r1']);
    expect(merged.leafId).toBe('r1');
  });

  test('opening a conversation shows its current leaf, and this page’s live answer below it', () => {
    const data = serverCopy(
      'c1',
      [serverUser('u1', null, 'Q'), serverAnswer('a1', 'u1', 'One'), serverAnswer('a2', 'u1', 'Two')],
      { current_leaf_id: 'a1' },
    );
    const cached = { ...mergeServer(storedConversation('c1'), data), leafId: 'a2' };
    expect(mergeServer(cached, data, { keepLeaf: false }).leafId).toBe('a1');
    expect(mergeServer(cached, data, { keepLeaf: true }).leafId).toBe('a2');
    // Known only by an answer still streaming (after a reload): it follows the leaf.
    const partial = { ...storedConversation('c1', 'partial'), messages: [] };
    const live = prepareRegenerate(mergeServer(partial, data), 'a1', 'r9').conversation;
    const reopened = mergeServer({ ...live, leafId: null }, data, { keepLeaf: false });
    expect(reopened.leafId).toBe('r9');
    expect(pathTo(reopened.messages, reopened.leafId).map((m) => m.id)).toEqual(['u1', 'r9']);
  });

  test('a conversation that is gone, or a store that failed', () => {
    expect(failedLoad(opened(), { code: 'not_found', message: 'no such conversation' })).toMatchObject({
      status: 'missing',
      error: { code: 'not_found', message: 'no such conversation' },
    });
    const failed = failedLoad(opened(), { code: 'history_unavailable', message: 'database down' });
    expect(failed.status).toBe('failed');
    expect(failed.messages).toHaveLength(2);
  });
});

describe("what the tab keeps over a reload", () => {
  test('the view, and every answer still streaming, come back ready to resume', () => {
    const view = acknowledge(
      prepareSend(opened(), 'Next?', [], ids).conversation,
      'r1',
      { ok: true, resume_token: 'tok1', conversation_id: 'c1', message_ids: ['s1'], answer_id: 's2' },
      ['q1'],
    );
    const other = acknowledge(
      prepareSend({ ...storedConversation('c2'), status: 'ready' }, 'Other?', [], { requestId: 'r2', messageId: 'q2' })
        .conversation,
      'r2',
      { ok: true, resume_token: 'tok2', conversation_id: 'c2', message_ids: ['s3'], answer_id: 's4' },
      ['q2'],
    );
    const { state: streamed } = applySocketEvents({ viewKey: 'c1', conversations: { c1: view, c2: other } }, [
      { type: 'chunk', payload: { id: 'r1', seq: 0, delta: 'Par' } },
      { type: 'chunk', payload: { id: 'r2', seq: 0, delta: 'Oth' } },
    ]);
    const saved = JSON.parse(JSON.stringify(toSession(streamed)));
    expect(saved.view).toEqual({ id: 'c1', leafId: 'r1', title: 'Tides' });
    expect(saved.transcript.map((m) => m.id)).toEqual(['u1', 'a1', 's1', 'r1']);
    expect(saved.live).toHaveLength(1);
    expect(saved.live[0].conversationId).toBe('c2');

    const back = fromSession(saved, 'draft:x');
    expect(back.viewKey).toBe('c1');
    const c1 = back.conversations.c1;
    expect([c1.status, c1.leafId]).toEqual(['loading', 'r1']);
    const answer = c1.messages.find((m) => m.id === 'r1');
    expect([answer.content, answer.resuming, answer.resumeToken, answer.nextSeq, answer.answerId]).toEqual([
      'Par',
      true,
      'tok1',
      1,
      's2',
    ]);
    const c2 = back.conversations.c2;
    expect(c2.status).toBe('partial');
    expect(c2.messages.map((m) => [m.id, m.parentId, m.content, m.resuming])).toEqual([['r2', 's3', 'Oth', true]]);
  });

  test('a new tab, or nothing kept: an empty new chat', () => {
    const state = fromSession({}, 'draft:y');
    expect(state.viewKey).toBe('draft:y');
    expect(state.conversations['draft:y']).toEqual(newConversation('draft:y'));
  });
});

describe('what the stored copy leaves to the page', () => {
  test('an answer still streaming (its `done` came before its last chunks) stays the streamed one', () => {
    let { conversation } = prepareSend(opened(), 'Next?', [], ids);
    conversation = acknowledge(
      conversation,
      'r1',
      { ok: true, conversation_id: 'c1', message_ids: ['s1'], answer_id: 's2' },
      ['q1'],
    );
    const { state } = applySocketEvents({ viewKey: 'c1', conversations: { c1: conversation } }, [
      { type: 'chunk', payload: { id: 'r1', seq: 1, delta: ' two' } },
      { type: 'done', payload: { id: 'r1', finish_reason: 'stop', chunks: 2, conversation_id: 'c1', answer_id: 's2' } },
    ]);
    const data = serverCopy('c1', [
      serverUser('u1', null, 'Why tides?'),
      serverAnswer('a1', 'u1', 'The moon.'),
      serverUser('s1', 'a1', 'Next?'),
      serverAnswer('s2', 's1', 'one two'),
    ]);
    const merged = mergeServer(state.conversations.c1, data);
    expect(merged.messages.map((m) => m.id)).toEqual(['u1', 'a1', 's1', 'r1']);
    expect(merged.leafId).toBe('r1');
    expect(merged.messages[3].status).toBe('streaming');
  });

  test("a question's images the page holds stay its own data URLs", () => {
    const image = { id: 'i1', name: 'a.png', type: 'image/png', url: 'data:image/png;base64,AAAA' };
    let { conversation } = prepareSend(opened(), 'Look', [image], ids);
    conversation = acknowledge(conversation, 'r1', { ok: true, conversation_id: 'c1', message_ids: ['s1'] }, ['q1']);
    const stored = serverUser('s1', 'a1', [
      { type: 'text', text: 'Look' },
      { type: 'image_url', image_url: { url: '/api/blobs/abc' } },
    ]);
    const data = serverCopy('c1', [serverUser('u1', null, 'Why tides?'), serverAnswer('a1', 'u1', 'The moon.'), stored]);
    const question = mergeServer(conversation, data).messages.find((m) => m.id === 's1');
    expect(question.images).toEqual([image]);
    // Opened afresh, the store's own address.
    const fresh = mergeServer(storedConversation('c1'), data).messages.find((m) => m.id === 's1');
    expect(fresh.images).toEqual([{ id: 's1:0', name: 'image', url: '/api/blobs/abc' }]);
  });
});
