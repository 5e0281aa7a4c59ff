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
import ThinkingBlock from './components/ThinkingBlock.jsx';

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
