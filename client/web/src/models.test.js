import { expect, test } from 'vitest';
import { parseModels, pickModel } from './models.js';

test('parseModels reads the ids of an OpenAI model list, first the default', () => {
  const body = {
    object: 'list',
    data: [
      { id: 'demo', object: 'model', created: 0, owned_by: 'chatstream' },
      { id: 'demo-reasoning', object: 'model', created: 0, owned_by: 'chatstream' },
      { id: 'demo' },
      { id: '' },
      { id: 7 },
      null,
    ],
  };
  expect(parseModels(body)).toEqual(['demo', 'demo-reasoning']);
  expect(parseModels({ object: 'list' })).toEqual([]);
  expect(parseModels('<html>')).toEqual([]);
  expect(parseModels(null)).toEqual([]);
});

test("pickModel keeps the tab's choice while it is offered, else takes the default", () => {
  const offered = ['demo', 'demo-reasoning'];
  expect(pickModel(offered, 'demo-reasoning')).toBe('demo-reasoning');
  expect(pickModel(offered, 'gone-model')).toBe('demo');
  expect(pickModel(offered, null)).toBe('demo');
  expect(pickModel([], 'demo-reasoning')).toBeNull();
});
