// The developers' `?options=` query: Chat Completions options sent with every question.
import { describe, expect, test } from 'vitest';
import { optionsFromQuery } from './requestOptions.js';

describe('request options from the query', () => {
  test('a JSON object is sent as options; anything else is ignored and said', () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }];
    const search = `?options=${encodeURIComponent(JSON.stringify({ tools, tool_choice: 'auto' }))}`;
    expect(optionsFromQuery(search)).toEqual({ options: { tools, tool_choice: 'auto' }, problem: null });
    expect(optionsFromQuery('')).toEqual({ options: null, problem: null });
    expect(optionsFromQuery('?options={}')).toEqual({ options: null, problem: null });
    for (const bad of ['?options=[1]', '?options=tools', '?options=null', '?options=%7B']) {
      expect(optionsFromQuery(bad)).toEqual({
        options: null,
        problem: 'The ?options= query is not a JSON object: ignored.',
      });
    }
  });
});
