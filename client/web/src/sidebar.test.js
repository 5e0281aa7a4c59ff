// The sidebar's and the branches' DOM (server-rendered to HTML: Vitest runs in Node), as
// a browser test would select it.
import { createElement as h } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { expect, test } from 'vitest';
import BranchNav from './components/BranchNav.jsx';
import ConversationNotice from './components/ConversationNotice.jsx';
import Message from './components/Message.jsx';
import Sidebar from './components/Sidebar.jsx';

const render = (component, props) => renderToStaticMarkup(h(component, props));
const noop = () => {};

function sidebar(fields) {
  return render(Sidebar, {
    open: true,
    items: [],
    query: '',
    onQuery: noop,
    status: 'ready',
    error: null,
    actionError: null,
    activeId: null,
    hasMore: false,
    onLoadMore: noop,
    onRetry: noop,
    onOpen: noop,
    onNewChat: noop,
    canNewChat: true,
    onRename: noop,
    onDelete: noop,
    onClose: noop,
    ...fields,
  });
}

test('the list: day headings, titles, the one in view marked', () => {
  const today = new Date().toISOString();
  const html = sidebar({
    items: [
      { id: 'c2', title: 'Tides', updated_at: today },
      { id: 'c1', title: null, updated_at: '2020-05-02T10:00:00Z' },
    ],
    activeId: 'c2',
  });
  expect(html).toContain('data-testid="conversation-group-label">Today</h2>');
  expect(html).toContain('data-testid="conversation-group-label">May 2020</h2>');
  expect(html).toMatch(
    /<li class="conversation is-active" data-testid="conversation-item" data-id="c2"><button type="button" class="conversation-open" aria-current="page" title="Tides" data-testid="conversation-title">Tides<\/button>/,
  );
  // Untitled until the server names it.
  expect(html).toContain('data-testid="conversation-title">New chat</button>');
  expect(html).toContain('data-open="true"');
});

test('closed, empty, searching, failing', () => {
  expect(sidebar({ open: false })).toContain('<aside id="sidebar" class="sidebar" aria-label="Chats" data-testid="sidebar" data-open="false">');
  expect(sidebar({})).toContain('data-testid="conversations-empty">Your chats will show here.</p>');
  expect(sidebar({ query: 'moon' })).toContain('data-testid="conversations-empty">No chat matches.</p>');
  const failed = sidebar({ status: 'failed', error: { code: 'history_unavailable', message: 'the store failed' } });
  expect(failed).toContain('data-testid="sidebar-error"');
  expect(failed).toContain('<code class="error-code">history_unavailable</code> the store failed');
  expect(failed).toContain('Try again');
  expect(sidebar({ hasMore: true })).toContain('data-testid="load-more"');
});

test('‹ 2/3 ›: both ways open in the middle, one way at an end', () => {
  const middle = render(BranchNav, { id: 'a', index: 2, count: 3, onSwitch: noop });
  expect(middle).toContain('data-testid="branch-position">2/3</span>');
  expect(middle).not.toContain('disabled');
  const first = render(BranchNav, { id: 'a', index: 1, count: 3, onSwitch: noop });
  expect(first).toMatch(/<button type="button" disabled="" aria-label="Previous version"/);
  expect(first).not.toMatch(/disabled="" aria-label="Next version"/);
});

test('a turn with siblings shows where it stands; a question can be edited', () => {
  const question = { id: 'u1', role: 'user', content: 'Why?' };
  const html = render(Message, { message: question, branchIndex: 2, branchCount: 2, onSwitchBranch: noop, onEdit: noop });
  expect(html).toContain('data-testid="branch-nav"');
  expect(html).toContain('data-testid="edit"');
  // The question's element holds its text alone, as a browser test reads it.
  expect(html).toContain('<article class="message user" data-testid="message-user" aria-label="You"><div class="bubble">Why?</div></article>');
  expect(render(Message, { message: question })).not.toContain('message-tools');
  const answer = {
    id: 'a1',
    role: 'assistant',
    content: 'Because.',
    reasoning: '',
    status: 'done',
    done: { finish_reason: 'stop' },
    nextSeq: 1,
    pending: {},
  };
  const answered = render(Message, { message: answer, branchIndex: 1, branchCount: 2, onSwitchBranch: noop });
  expect(answered.indexOf('data-testid="branch-nav"')).toBeGreaterThan(answered.indexOf('answer-text'));
});

test('a conversation that cannot be shown says why', () => {
  const missing = render(ConversationNotice, {
    error: { code: 'not_found', message: 'no such conversation' },
    onRetry: noop,
    onNewChat: noop,
  });
  expect(missing).toContain('data-code="not_found"');
  expect(missing).toContain('This chat does not exist: it was deleted, or it is not yours.');
  expect(missing).not.toContain('conversation-retry');
  const down = render(ConversationNotice, { error: { code: 'history_unavailable', message: 'x' }, onRetry: noop });
  expect(down).toContain('Saved chats are unavailable right now');
  expect(down).toContain('data-testid="conversation-retry"');
  expect(render(ConversationNotice, { error: null, notice: null })).toBe('');
});
