import { expect, test } from 'vitest';
import {
  ApiError,
  deleteConversation,
  exportUrl,
  getConversation,
  listConversations,
  renameConversation,
} from './conversationsApi.js';

// Stands in for fetch: records each call and answers with `status` and `body`.
function fakeFetch(status, body) {
  const calls = [];
  const fetcher = async (url, init) => {
    calls.push({ url, ...init });
    return {
      ok: status >= 200 && status < 300,
      status,
      json: async () => {
        if (body === undefined) throw new SyntaxError('no JSON');
        return body;
      },
    };
  };
  return { calls, fetcher };
}

test('the list asks with limit, search and cursor in the query', async () => {
  const { calls, fetcher } = fakeFetch(200, { data: [], next_cursor: null });
  expect(await listConversations({ q: 'moon tides', before: 'cur', limit: 20, fetcher })).toEqual({
    data: [],
    next_cursor: null,
  });
  expect(calls[0].url).toBe('/api/conversations?limit=20&q=moon+tides&before=cur');
  expect(calls[0].method).toBe('GET');
  expect(calls[0].credentials).toBe('same-origin');
});

test('rename sends the title as JSON; delete takes 204; ids are escaped', async () => {
  const patch = fakeFetch(200, { id: 'a/b', title: 'T' });
  await renameConversation('a/b', 'T', { fetcher: patch.fetcher });
  expect(patch.calls[0]).toMatchObject({ url: '/api/conversations/a%2Fb', method: 'PATCH', body: '{"title":"T"}' });
  expect(patch.calls[0].headers['Content-Type']).toBe('application/json');
  const removal = fakeFetch(204);
  expect(await deleteConversation('c1', { fetcher: removal.fetcher })).toBeNull();
  expect(removal.calls[0].method).toBe('DELETE');
  expect(exportUrl('c1', 'md')).toBe('/api/conversations/c1/export?format=md');
});

test("a refusal carries the server's code and message; no JSON or no server still says something", async () => {
  const missing = fakeFetch(404, { error: { code: 'not_found', message: 'no such conversation', type: 'x' } });
  const error = await getConversation('c1', { fetcher: missing.fetcher }).catch((e) => e);
  expect(error).toBeInstanceOf(ApiError);
  expect([error.status, error.code, error.message]).toEqual([404, 'not_found', 'no such conversation']);

  const proxy = fakeFetch(502);
  const bad = await getConversation('c1', { fetcher: proxy.fetcher }).catch((e) => e);
  expect([bad.status, bad.code, bad.message]).toEqual([502, 'http_502', 'The server answered HTTP 502.']);

  const down = await getConversation('c1', {
    fetcher: async () => {
      throw new TypeError('Failed to fetch');
    },
  }).catch((e) => e);
  expect([down.status, down.code]).toEqual([0, 'network']);
});
