// Moderation on the page: a `retract` takes the flagged chunks back out of the answer
// (in seq terms, whatever their kinds), and the answer says what the content filter did.
import { createElement as h } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, test } from 'vitest';
import ModerationNotice from './components/ModerationNotice.jsx';
import Message from './components/Message.jsx';
import { FILTERED, REFUSED, RETRACTED, moderationNotice } from './moderation.js';
import { applyEvents, assistantMessage, toStored, userMessage } from './streamState.js';

const chunk = (seq, delta, kind) => ({ type: 'chunk', payload: { id: 'a', seq, delta, ...(kind && { kind }) } });
const retract = (from) => ({ type: 'retract', payload: { id: 'a', from_seq: from } });
const done = (chunks) => ({
  type: 'done',
  payload: { id: 'a', finish_reason: 'content_filter', chunks, usage: null, timing: null },
});

function streamed(events) {
  return applyEvents([userMessage('u', 'hi'), assistantMessage('a')], events)[1];
}

describe('a retract', () => {
  test('takes the chunks from from_seq on back, of every kind, and the done follows', () => {
    const answer = streamed([
      chunk(0, 'Let me think.', 'reasoning'),
      chunk(1, 'Fine'),
      chunk(2, ' words'),
      chunk(3, ' zorblax'),
      chunk(4, ' more'),
      retract(2),
      done(2),
    ]);
    expect(answer.content).toBe('Fine');
    expect(answer.reasoning).toBe('Let me think.');
    expect(answer.status).toBe('done');
    expect(answer.retracted).toBe(true);
    expect(answer.marks).toBeUndefined();
  });

  test('drops chunks held past a gap from from_seq on, and one beyond what arrived changes no text', () => {
    const held = streamed([chunk(0, 'a'), chunk(1, 'b'), chunk(3, 'd'), chunk(5, 'f'), retract(4)]);
    expect(held.content).toBe('ab');
    expect(Object.keys(held.pending)).toEqual(['3']);
    expect(held.retracted).toBe(true);
  });

  test('a retract of everything leaves an empty answer; a refusal goes back too', () => {
    const answer = streamed([chunk(0, 'No', 'refusal'), chunk(1, ' way'), retract(0), done(0)]);
    expect(answer.content).toBe('');
    expect(answer.refusal).toBe('');
    expect(answer.status).toBe('done');
  });

  test('after a reload mid-answer (no marks kept) a retract takes all the text back', () => {
    const live = applyEvents([assistantMessage('a')], [chunk(0, 'one'), chunk(1, ' two')]);
    const [reloaded] = toStored(live);
    expect(reloaded.marks).toBeUndefined();
    const [answer] = applyEvents([{ ...reloaded, pending: {} }], [chunk(2, ' three'), retract(1), done(1)]);
    expect(answer.content).toBe('');
    expect(answer.retracted).toBe(true);
  });

  test('for another request, or a malformed one, changes nothing', () => {
    const messages = applyEvents([assistantMessage('a')], [chunk(0, 'x')]);
    expect(applyEvents(messages, [{ type: 'retract', payload: { id: 'b', from_seq: 0 } }])).toBe(messages);
    expect(applyEvents(messages, [{ type: 'retract', payload: { id: 'a', from_seq: -1 } }])).toBe(messages);
    expect(applyEvents(messages, [{ type: 'retract', payload: { id: 'a' } }])).toBe(messages);
  });
});

describe('the moderation notice', () => {
  test('says what the content filter did', () => {
    const answer = { role: 'assistant', status: 'done', content: '' };
    expect(moderationNotice({ ...answer, retracted: true })).toBe(RETRACTED);
    expect(moderationNotice({ ...answer, done: { finish_reason: 'content_filter' } })).toBe(FILTERED);
    expect(moderationNotice({ ...answer, status: 'error', error: { code: 'content_filtered' } })).toBe(REFUSED);
    expect(moderationNotice({ ...answer, done: { finish_reason: 'stop' } })).toBeNull();
    expect(moderationNotice({ role: 'user', content: 'hi' })).toBeNull();
  });

  test('renders as a note, and nothing when none applies', () => {
    const html = renderToStaticMarkup(h(ModerationNotice, { message: { role: 'assistant', retracted: true } }));
    expect(html).toBe(`<p class="moderation-notice" role="note" data-testid="moderation-notice">${RETRACTED}</p>`);
    expect(renderToStaticMarkup(h(ModerationNotice, { message: { role: 'assistant' } }))).toBe('');
  });

  test('an answer whose end was taken back shows what was kept, then the notice', () => {
    const answer = streamed([chunk(0, 'Kept text'), chunk(1, ' flagged'), retract(1), done(1)]);
    const html = renderToStaticMarkup(h(Message, { message: answer }));
    expect(html).toContain('Kept text');
    expect(html).not.toContain('flagged');
    expect(html).toMatch(/Kept text.*data-testid="moderation-notice">Part of this answer was withdrawn/s);
  });
});
