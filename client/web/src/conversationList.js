// The sidebar's list of the owner's conversations, as pure functions over an array of
// {id, title, model, created_at, updated_at, current_leaf_id?}, newest update first
// (as GET /api/conversations returns them).

function time(item) {
  const t = Date.parse(item.updated_at);
  return Number.isNaN(t) ? 0 : t;
}

/** Newest update first; equal times keep their order. */
export function sortItems(items) {
  return items
    .map((item, index) => ({ item, index }))
    .sort((a, b) => time(b.item) - time(a.item) || a.index - b.index)
    .map(({ item }) => item);
}

const FIELDS = ['title', 'model', 'created_at', 'updated_at', 'current_leaf_id'];

function fieldsOf(payload) {
  const fields = {};
  for (const field of FIELDS) if (payload[field] !== undefined) fields[field] = payload[field];
  return fields;
}

/**
 * A `conversation` event ({id, title, model, created_at, updated_at}: created or
 * renamed) applied: a known item takes its fields; an unknown one is added when
 * `insert` (a search's results take only what the server matched).
 */
export function upsertItem(items, payload, insert = true) {
  if (!payload || typeof payload.id !== 'string') return items;
  const at = items.findIndex((item) => item.id === payload.id);
  if (at < 0) return insert ? sortItems([{ id: payload.id, ...fieldsOf(payload) }, ...items]) : items;
  const next = items.slice();
  next[at] = { ...items[at], ...fieldsOf(payload) };
  return sortItems(next);
}

/** The conversation `id` was just continued: to the top, updated `at` (ISO 8601). */
export function touchItem(items, id, at) {
  const index = items.findIndex((item) => item.id === id);
  if (index < 0) return items;
  const next = items.slice();
  next[index] = { ...items[index], updated_at: at };
  return sortItems(next);
}

export function renameItem(items, id, title) {
  const at = items.findIndex((item) => item.id === id);
  if (at < 0 || items[at].title === title) return items;
  const next = items.slice();
  next[at] = { ...items[at], title };
  return next;
}

export function removeItem(items, id) {
  const next = items.filter((item) => item.id !== id);
  return next.length === items.length ? items : next;
}

/** A further page appended, without the items already listed. */
export function appendPage(items, page) {
  const known = new Set(items.map((item) => item.id));
  const fresh = page.filter((item) => item && typeof item.id === 'string' && !known.has(item.id));
  return fresh.length === 0 ? items : [...items, ...fresh];
}
