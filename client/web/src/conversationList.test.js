import { expect, test } from 'vitest';
import { appendPage, removeItem, renameItem, sortItems, touchItem, upsertItem } from './conversationList.js';

const item = (id, updated_at, title = id) => ({ id, title, model: 'demo', created_at: updated_at, updated_at });
const LIST = [item('b', '2026-03-15T10:00:00Z'), item('a', '2026-03-14T10:00:00Z')];
const ids = (items) => items.map((i) => i.id);

test('a conversation created elsewhere appears at the top; a rename updates it in place', () => {
  const created = upsertItem(LIST, item('c', '2026-03-15T11:00:00Z', 'New one'));
  expect(ids(created)).toEqual(['c', 'b', 'a']);
  expect(created[0].title).toBe('New one');
  const renamed = upsertItem(created, { id: 'a', title: 'Renamed', updated_at: '2026-03-14T10:00:00Z' });
  expect(ids(renamed)).toEqual(['c', 'b', 'a']);
  expect(renamed[2].title).toBe('Renamed');
  // Search results take only what the server matched.
  expect(upsertItem(LIST, item('c', '2026-03-15T11:00:00Z'), false)).toBe(LIST);
  expect(upsertItem(LIST, { title: 'no id' })).toBe(LIST);
});

test('a conversation continued here moves to the top', () => {
  expect(ids(touchItem(LIST, 'a', '2026-03-15T12:00:00Z'))).toEqual(['a', 'b']);
  expect(touchItem(LIST, 'zz', '2026-03-15T12:00:00Z')).toBe(LIST);
});

test('rename, remove, and a further page without repeats', () => {
  expect(renameItem(LIST, 'a', 'Tides')[1].title).toBe('Tides');
  expect(renameItem(LIST, 'a', 'a')).toBe(LIST);
  expect(ids(removeItem(LIST, 'b'))).toEqual(['a']);
  expect(removeItem(LIST, 'zz')).toBe(LIST);
  expect(ids(appendPage(LIST, [item('a', '2026-03-14T10:00:00Z'), item('z', '2026-03-01T10:00:00Z')]))).toEqual([
    'b',
    'a',
    'z',
  ]);
  expect(appendPage(LIST, [])).toBe(LIST);
});

test('newest first; equal times keep their order', () => {
  const same = '2026-03-15T10:00:00Z';
  expect(ids(sortItems([item('x', same), item('old', '2026-01-01T00:00:00Z'), item('y', same)]))).toEqual([
    'x',
    'y',
    'old',
  ]);
});
