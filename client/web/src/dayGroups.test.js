import { expect, test } from 'vitest';
import { dayLabel, groupByDay } from './dayGroups.js';

// Local times, as the reader's calendar has them: Sunday 15 March 2026, 10:00.
const NOW = new Date(2026, 2, 15, 10, 0);
const at = (...parts) => new Date(...parts);

test('days are the reader’s calendar days, not 24-hour spans', () => {
  expect(dayLabel(at(2026, 2, 15, 9, 59), NOW)).toBe('Today');
  expect(dayLabel(at(2026, 2, 15, 0, 0), NOW)).toBe('Today');
  expect(dayLabel(at(2026, 2, 14, 23, 59), NOW)).toBe('Yesterday');
  expect(dayLabel(at(2026, 2, 14, 0, 0), NOW)).toBe('Yesterday');
  expect(dayLabel(at(2026, 2, 13, 23, 59), NOW)).toBe('Previous 7 days');
  expect(dayLabel(at(2026, 2, 8, 0, 0), NOW)).toBe('Previous 7 days');
  expect(dayLabel(at(2026, 2, 7, 23, 59), NOW)).toBe('March 2026');
  expect(dayLabel(at(2026, 1, 28, 12), NOW)).toBe('February 2026');
  expect(dayLabel(at(2025, 11, 31, 12), NOW)).toBe('December 2025');
  // A server clock a little ahead of this one.
  expect(dayLabel(at(2026, 2, 15, 10, 5), NOW)).toBe('Today');
});

test('groups keep the list’s order (newest first) and each label once', () => {
  const item = (id, date) => ({ id, updated_at: date.toISOString() });
  const items = [
    item('t1', at(2026, 2, 15, 9)),
    item('t2', at(2026, 2, 15, 1)),
    item('y1', at(2026, 2, 14, 18)),
    item('w1', at(2026, 2, 10, 8)),
    item('m1', at(2026, 2, 2, 8)),
    item('f1', at(2026, 1, 20, 8)),
    item('d1', at(2025, 11, 1, 8)),
  ];
  const groups = groupByDay(items, NOW);
  expect(groups.map((group) => [group.label, group.items.map((i) => i.id)])).toEqual([
    ['Today', ['t1', 't2']],
    ['Yesterday', ['y1']],
    ['Previous 7 days', ['w1']],
    ['March 2026', ['m1']],
    ['February 2026', ['f1']],
    ['December 2025', ['d1']],
  ]);
});

test('an unreadable date goes under Today, in a group of its own label', () => {
  const groups = groupByDay(
    [
      { id: 'a', updated_at: at(2026, 2, 15, 9).toISOString() },
      { id: 'b', updated_at: at(2026, 2, 14, 9).toISOString() },
      { id: 'c', updated_at: 'not a date' },
    ],
    NOW,
  );
  expect(groups.map((group) => [group.label, group.items.map((i) => i.id)])).toEqual([
    ['Today', ['a', 'c']],
    ['Yesterday', ['b']],
  ]);
  expect(groupByDay([], NOW)).toEqual([]);
});
