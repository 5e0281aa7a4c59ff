// The DOM the chat page's components render (server-rendered to HTML: Vitest runs in
// Node), as a browser test would select it.
import { createElement as h } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, test } from 'vitest';
import AnswerMeta from './components/AnswerMeta.jsx';
import ConnectionNotice from './components/ConnectionNotice.jsx';
import ConnectionState from './components/ConnectionState.jsx';
import Message from './components/Message.jsx';
import ModelChooser from './components/ModelChooser.jsx';
import Composer from './components/Composer.jsx';
import RequestOptions from './components/RequestOptions.jsx';
import ThinkingBlock from './components/ThinkingBlock.jsx';
import ToolCallCard from './components/ToolCallCard.jsx';

const render = (component, props) => renderToStaticMarkup(h(component, props));

function answer(fields) {
  return {
    id: 'a1',
    role: 'assistant',
    content: '',
    reasoning: '',
    status: 'streaming',
    nextSeq: 0,
    pending: {},
    ...fields,
  };
}

describe('the thinking block', () => {
  test('while the model reasons: open, "Thinking…" with the time so far', () => {
    const html = render(ThinkingBlock, { reasoning: 'Let me see.', thinkingSince: Date.now() - 4200, answered: false });
    expect(html).toMatch(
      /<section class="thinking is-thinking" data-testid="thinking" data-state="thinking" data-open="true">/,
    );
    expect(html).toMatch(
      /<button type="button" class="thinking-toggle" aria-expanded="true" aria-controls="[^"]+" data-testid="thinking-toggle">/,
    );
    expect(html).toContain('Thinking… <span class="thinking-time" aria-live="off">4 s</span>');
    expect(html).toMatch(
      /<div id="[^"]+" class="thinking-body"><div class="markdown-reasoning" data-testid="thinking-text"><p>Let me see.<\/p>/,
    );
  });

  test('once the answer started: closed, "Thought for N s", the text kept but hidden', () => {
    const html = render(ThinkingBlock, {
      reasoning: 'Let me see.',
      thinkingSince: 0,
      thinkingMs: 11_600,
      answered: true,
    });
    expect(html).toContain('data-state="done" data-open="false"');
    expect(html).toContain('aria-expanded="false"');
    expect(html).toContain('<span class="thinking-label" data-testid="thinking-label">Thought for 12 s</span>');
    expect(html).toMatch(/class="thinking-body" hidden="">/);
  });

  test('reasoning and no answer (cut by max_tokens): stays open', () => {
    const html = render(ThinkingBlock, { reasoning: 'First…', thinkingSince: 0, thinkingMs: 300, answered: false });
    expect(html).toContain('data-state="done" data-open="true"');
    expect(html).toContain('Thought for 1 s');
  });
});

describe('an assistant message', () => {
  test('the thinking block comes before the answer text', () => {
    const html = render(Message, {
      message: answer({ reasoning: 'plan', content: 'The answer.', thinkingSince: 0, thinkingMs: 2000 }),
    });
    expect(html.indexOf('data-testid="thinking"')).toBeGreaterThan(-1);
    expect(html.indexOf('data-testid="thinking"')).toBeLessThan(html.indexOf('data-testid="answer-text"'));
    expect(html).toContain('<div class="markdown" data-testid="answer-text"><p>The answer.</p>');
    expect(html).not.toContain('class="typing"');
  });

  test('reasoning under way: the thinking block instead of the waiting dots', () => {
    const html = render(Message, { message: answer({ reasoning: 'plan', thinkingSince: Date.now() }) });
    expect(html).toContain('data-testid="thinking"');
    expect(html).not.toContain('class="typing"');
    expect(html).not.toContain('answer-text');
  });

  test('no reasoning: no thinking block', () => {
    expect(render(Message, { message: answer({}) })).toContain('class="typing"');
    expect(render(Message, { message: answer({ content: 'Hi' }) })).not.toContain('thinking');
  });
});

test('AnswerMeta adds reasoning tokens and the time to the first answer text', () => {
  const done = {
    finish_reason: 'stop',
    model: 'demo-reasoning',
    usage: { completion_tokens: 90, reasoning_tokens: 60, estimated: false },
    timing: { ttft_ms: 400, answer_ttft_ms: 12_400, total_ms: 13_000 },
  };
  const html = render(AnswerMeta, { done });
  expect(html).toContain('data-testid="meta-answer-ttft">answer after 12.40 s</span>');
  expect(html).toContain('data-testid="meta-reasoning-tokens">60 reasoning</span>');
  const plain = render(AnswerMeta, {
    done: {
      ...done,
      usage: { completion_tokens: 9, reasoning_tokens: 0 },
      timing: { ttft_ms: 400, answer_ttft_ms: 400, total_ms: 900 },
    },
  });
  expect(plain).not.toContain('meta-answer-ttft');
  expect(plain).not.toContain('meta-reasoning-tokens');
});

test('the model chooser: a labelled select when there is a choice, nothing otherwise', () => {
  const html = render(ModelChooser, {
    models: ['demo', 'demo-reasoning'],
    value: 'demo-reasoning',
    onChange: () => {},
  });
  expect(html).toContain('<span class="visually-hidden">Model</span><select data-testid="model-chooser">');
  expect(html).toContain('<option value="demo-reasoning" selected="">demo-reasoning</option>');
  expect(render(ModelChooser, { models: ['demo'], value: 'demo', onChange: () => {} })).toBe('');
  expect(render(ModelChooser, { models: [], value: null, onChange: () => {} })).toBe('');
});

test('a refused connection: the state says so and the notice says why', () => {
  expect(render(ConnectionState, { state: 'refused' })).toContain('data-state="refused" role="status">');
  expect(render(ConnectionState, { state: 'refused' })).toContain('Refused</span>');
  const text = 'The server is full. Retrying…';
  expect(render(ConnectionNotice, { text })).toBe(
    `<p class="connection-notice" role="alert" data-testid="connection-notice">${text}</p>`,
  );
  expect(render(ConnectionNotice, { text: null })).toBe('');
});

describe('tool calls', () => {
  const call = { index: 0, id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}' };
  const DONE = {
    finish_reason: 'tool_calls',
    tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
  };

  test('while streaming: the name and the raw arguments so far', () => {
    const html = render(ToolCallCard, { call: { ...call, arguments: '{"city":"Pa' }, state: 'streaming' });
    expect(html).toContain('<section class="tool-call is-streaming" data-testid="tool-call" data-state="streaming"');
    expect(html).toContain('<code class="tool-call-name" data-testid="tool-call-name">get_weather</code>');
    expect(html).toContain('data-testid="tool-call-state">calling…</span>');
    expect(html).toContain('data-json="false"><code>{&quot;city&quot;:&quot;Pa</code></pre>');
  });

  test('once called: the arguments pretty-printed', () => {
    const html = render(ToolCallCard, { call, state: 'called' });
    expect(html).toContain('data-testid="tool-call-state">called</span>');
    expect(html).toContain('data-json="true"><code>{\n  &quot;city&quot;: &quot;Paris&quot;\n}</code></pre>');
  });

  test('a message shows a card per call after its text, and says the page runs no tools', () => {
    const message = answer({
      content: 'Checking.',
      toolCalls: [call, { index: 1, id: 'call_2', name: 'get_time', arguments: '{}' }],
      status: 'done',
      done: {
        ...DONE,
        tool_calls: [...DONE.tool_calls, { id: 'call_2', type: 'function', function: { name: 'get_time', arguments: '{}' } }],
      },
    });
    const html = render(Message, { message });
    expect(html.match(/data-testid="tool-call" data-state="called"/g)).toHaveLength(2);
    expect(html.indexOf('answer-text')).toBeLessThan(html.indexOf('data-testid="tool-call"'));
    expect(html.indexOf('get_weather')).toBeLessThan(html.indexOf('get_time'));
    expect(html).toContain('data-testid="tool-note"');
    expect(html).toContain('data-finish="tool_calls"');
  });

  test('only tool calls so far: no waiting dots, and no note until the calls are whole', () => {
    const html = render(Message, { message: answer({ toolCalls: [call] }) });
    expect(html).not.toContain('class="typing"');
    expect(html).toContain('data-state="streaming"');
    expect(html).not.toContain('tool-note');
  });
});

test('a refusal shows in place of the answer, marked as one', () => {
  const html = render(Message, { message: answer({ refusal: "I can't help with that.", status: 'done', done: {} }) });
  expect(html).toContain(
    '<div class="refusal" role="note" data-testid="refusal"><span class="refusal-label">Refused</span> I can&#x27;t help with that.</div>',
  );
  expect(html).not.toContain('answer-text');
  expect(html).not.toContain('class="typing"');
});

describe('images', () => {
  const url = 'data:image/png;base64,iVBORw0KGgo=';
  const user = (images) => ({ id: 'u1', role: 'user', content: 'What is this?', images });

  test("a user turn shows its images' thumbnails above its text", () => {
    const html = render(Message, { message: user([{ id: 'i1', name: 'cat.png', width: 40, height: 30, url }]) });
    expect(html).toContain(
      `<div class="bubble"><div class="user-images"><img class="user-image" src="${url}" alt="cat.png" width="40" height="30" data-testid="user-image"/></div>What is this?</div>`,
    );
  });

  test('an image not kept over a reload says so', () => {
    const html = render(Message, { message: user([{ id: 'i1', name: 'cat.png' }]) });
    expect(html).toContain('<span class="image-missing" title="cat.png" data-testid="user-image-missing">image not kept</span>');
    expect(html).not.toContain('<img');
  });

  test('the composer has an attach button and a file input for images', () => {
    const html = render(Composer, { onSend: () => true, onStop: () => {}, streaming: false, canSend: true });
    expect(html).toContain('<input type="file" accept="image/*" multiple="" hidden="" data-testid="attach-input"/>');
    expect(html).toMatch(/<button type="button" class="attach" title="Attach images" aria-label="Attach images" data-testid="attach">/);
    expect(html).not.toContain('data-testid="attachments"');
  });
});

test('options from the query are named in the top bar; a bad query says it was ignored', () => {
  const html = render(RequestOptions, { options: { tools: [], tool_choice: 'auto' }, problem: null });
  expect(html).toContain('data-testid="request-options">options: tools, tool_choice</span>');
  expect(render(RequestOptions, { options: null, problem: 'ignored.' })).toContain('is-ignored');
  expect(render(RequestOptions, { options: null, problem: null })).toBe('');
});
