// The conversation store's REST API (/api/conversations), on the page's own origin: the
// owner is the page's cookie (or, behind a token, whatever the server makes of it).

/** A failed call: the server's error code and message, and the HTTP status (0: none). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// What the page says when the server's answer carries no error of its own.
const NO_SERVER = 'The server could not be reached.';

async function call(path, { method = 'GET', body, signal, fetcher = fetch } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetcher(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal,
    });
  } catch (error) {
    if (error?.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', NO_SERVER);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON: an error page of a proxy, or an older server without this API.
  }
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(
      response.status,
      typeof error?.code === 'string' ? error.code : `http_${response.status}`,
      typeof error?.message === 'string' ? error.message : `The server answered HTTP ${response.status}.`,
    );
  }
  return data;
}

const BASE = '/api/conversations';

function one(id) {
  return `${BASE}/${encodeURIComponent(id)}`;
}

/** {data: [...], next_cursor}: newest first; `q` searches titles and messages. */
export function listConversations({ q, before, limit = 50, signal, fetcher } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (q) query.set('q', q);
  if (before) query.set('before', before);
  return call(`${BASE}?${query}`, { signal, fetcher });
}

/** The conversation with every message of every branch, oldest first. */
export function getConversation(id, { signal, fetcher } = {}) {
  return call(one(id), { signal, fetcher });
}

export function renameConversation(id, title, { fetcher } = {}) {
  return call(one(id), { method: 'PATCH', body: { title }, fetcher });
}

export function deleteConversation(id, { fetcher } = {}) {
  return call(one(id), { method: 'DELETE', fetcher });
}

/** Where the browser downloads the conversation as `format` ('md' or 'json'). */
export function exportUrl(id, format) {
  return `${one(id)}/export?format=${format}`;
}
