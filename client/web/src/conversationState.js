// The conversations the page holds, as pure functions. The server keeps every
// conversation (GET /api/conversations/{id}); the page holds the ones it has opened or
// streams an answer for, each as a flat array of messages forming a tree (branches.js),
// and streams answers into them with streamState.js.
//
// A conversation: {key, id, title, messages, leafId, status, error}
//   key     the page's own name for it, never changed: the server's id, or a draft's
//   id      the server's id; null until the server has stored it (a new chat, or a
//           server that stores nothing for this page)
//   leafId  the end of the branch in view
//   status  'new' (not stored) | 'loading' | 'ready' | 'partial' (only a live answer
//           known, the rest not fetched yet) | 'missing' (not_found) | 'failed'
//   error   {code, message} when missing or failed
//
// A message is streamState.js's, with `parentId`; one made on this page also has
//   local   true until the server's copy arrives (then the server's copy replaces it)
//   sent    a question (or any sent turn) the server stored under this id (from the ack)
//   answerId  an answer's id in the store (from the ack; its own id is the request's,
//           which its chunks carry)
//   saved   the store wrote the answer (its `done`, or an error other than
//           history_unavailable, said so)

import { branchPositions, latestLeaf, latestLeafBelow, pathTo } from './branches.js';
import {
  applyEvents,
  assistantMessage,
  fromStored,
  historyOf,
  noteGaps,
  serverThinkingMs,
  setResumeToken,
  toStored,
  userMessage,
} from './streamState.js';

export function newConversation(key) {
  return { key, id: null, title: null, messages: [], leafId: null, status: 'new', error: null };
}

/** A conversation known by its server id, not fetched yet. */
export function storedConversation(id, status = 'loading') {
  return { ...newConversation(id), id, status };
}

/**
 * What the page shows of a conversation: the branch in view (`path`), its turns
 * (`shown`: tool results are sent, not shown) and their places among their siblings.
 */
export function viewOf(conversation) {
  const path = pathTo(conversation.messages, conversation.leafId);
  const shown = path.filter((m) => m.role === 'user' || m.role === 'assistant');
  return { path, shown, positions: branchPositions(conversation.messages, shown) };
}

/** The id the store knows a message by, or null when it has not stored it (yet). */
export function storedIdOf(message) {
  if (!message.local || message.sent) return message.id;
  if (message.role === 'assistant' && message.saved && message.answerId) return message.answerId;
  return null;
}

// ---------- the server's messages ----------

// Images the page may show: the store's own (same origin) or data URLs. Never a remote
// URL a client of the API sent: the page loads nothing from elsewhere.
const SHOWN_IMAGE = /^(\/api\/blobs\/[A-Za-z0-9_-]+$|data:image\/)/;

function partsOf(content) {
  if (typeof content === 'string') return { text: content, images: [], refusal: '' };
  const texts = [];
  const images = [];
  let refusal = '';
  for (const part of Array.isArray(content) ? content : []) {
    if (part?.type === 'text' && typeof part.text === 'string') texts.push(part.text);
    else if (part?.type === 'image_url' && typeof part.image_url?.url === 'string') images.push(part.image_url.url);
    else if (part?.type === 'refusal' && typeof part.refusal === 'string') refusal += part.refusal;
  }
  return { text: texts.join('\n\n'), images, refusal };
}

function storedImages(messageId, urls) {
  return urls.map((url, index) => {
    const image = { id: `${messageId}:${index}`, name: 'image' };
    if (SHOWN_IMAGE.test(url)) image.url = url;
    return image;
  });
}

function storedAnswer(m, parentId) {
  const { text, refusal } = partsOf(m.content);
  const toolCalls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
  const answer = {
    id: m.id,
    parentId,
    role: 'assistant',
    content: text,
    reasoning: typeof m.reasoning === 'string' ? m.reasoning : '',
    refusal,
    toolCalls: toolCalls
      .filter((call) => call && typeof call.function?.name === 'string')
      .map((call, index) => ({
        index,
        id: call.id,
        name: call.function.name,
        arguments: typeof call.function.arguments === 'string' ? call.function.arguments : '',
      })),
    nextSeq: 0,
    pending: {},
  };
  if (m.error && typeof m.error === 'object') {
    answer.status = 'error';
    answer.error = {
      code: typeof m.error.code === 'string' ? m.error.code : 'internal',
      message: typeof m.error.message === 'string' ? m.error.message : 'The answer failed.',
      retryable: Boolean(m.error.retryable),
    };
  } else {
    answer.status = 'done';
    answer.done = { id: m.id, finish_reason: m.finish_reason ?? 'stop' };
    for (const field of ['usage', 'timing', 'model']) if (m[field] != null) answer.done[field] = m[field];
    if (toolCalls.length > 0) answer.done.tool_calls = toolCalls;
  }
  if (answer.reasoning) {
    const thinkingMs = serverThinkingMs({ timing: m.timing });
    if (thinkingMs !== undefined) answer.thinkingMs = thinkingMs;
  }
  return answer;
}

// The stored copy of a question this page asked, with the images it still holds: the
// same pictures, shown (and sent again by an edit) without fetching them back.
function withHeldImages(stored, own) {
  const held = own?.images ?? [];
  if (stored.role !== 'user' || held.length === 0 || held.length !== (stored.images ?? []).length) return stored;
  if (!held.every((image) => image.url?.startsWith('data:'))) return stored;
  return { ...stored, images: held };
}

/** A message of `GET /api/conversations/{id}` as the page holds it; null if unusable. */
export function fromServerMessage(m) {
  if (!m || typeof m.id !== 'string') return null;
  const parentId = typeof m.parent_id === 'string' ? m.parent_id : null;
  if (m.role === 'assistant') return storedAnswer(m, parentId);
  if (m.role === 'user') {
    const { text, images } = partsOf(m.content);
    return { ...userMessage(m.id, text, storedImages(m.id, images)), parentId };
  }
  if (m.role === 'tool') {
    const { text } = partsOf(m.content);
    return { id: m.id, parentId, role: 'tool', content: text, toolCallId: m.tool_call_id ?? null };
  }
  return null;
}

/**
 * The conversation with the server's copy (`data`: GET /api/conversations/{id}) in
 * place of what the page held: the page's own messages the copy does not have yet
 * stay (a live answer, a question not yet acknowledged, one the server refused); a
 * streamed answer the store now holds gives way to the stored one.
 *
 * The branch in view stays (under the stored answer's id when it was a streamed one)
 * when `keepLeaf` says so or when it ends at the page's own message; otherwise it ends
 * at an answer the page still streams into it, or at the server's current leaf.
 */
export function mergeServer(conversation, data, { keepLeaf = true } = {}) {
  // An answer still streaming here stays as it is until it ends (its chunks, holes and
  // resumes are the page's to finish), whatever the store holds of it.
  const streaming = new Set(
    conversation.messages
      .filter((m) => m.local && m.role === 'assistant' && m.status === 'streaming' && m.answerId)
      .map((m) => m.answerId),
  );
  const own = new Map(conversation.messages.filter((m) => m.local).map((m) => [m.id, m]));
  const server = (Array.isArray(data?.messages) ? data.messages : [])
    .map(fromServerMessage)
    .filter((m) => m && !streaming.has(m.id))
    .map((m) => withHeldImages(m, own.get(m.id)));
  const ids = new Set(server.map((m) => m.id));
  const kept = conversation.messages.filter(
    (m) =>
      m.local &&
      (m.status === 'streaming' || (!ids.has(m.id) && !(m.answerId && ids.has(m.answerId)))),
  );
  const messages = [...server, ...kept];
  const present = new Set(messages.map((m) => m.id));
  const leaf = conversation.messages.find((m) => m.id === conversation.leafId);
  let leafId = null;
  if (leaf?.answerId && ids.has(leaf.answerId)) {
    if (keepLeaf) leafId = leaf.answerId;
  } else if (leaf && present.has(leaf.id) && (keepLeaf || leaf.local)) {
    leafId = leaf.id;
  }
  const live = kept.filter((m) => m.role === 'assistant' && m.status === 'streaming');
  if (leafId === null && live.length > 0) {
    // An answer this page streams into the conversation is what the reader comes for.
    leafId = live[live.length - 1].id;
  } else if (leafId === null) {
    const current = typeof data?.current_leaf_id === 'string' ? data.current_leaf_id : null;
    leafId = current && present.has(current) ? current : latestLeaf(messages);
    // The page's own messages below the stored leaf go on from there.
    if (leafId !== null) leafId = latestLeafBelow(messages, leafId);
  }
  return {
    ...conversation,
    id: typeof data?.id === 'string' ? data.id : conversation.id,
    title: typeof data?.title === 'string' ? data.title : conversation.title,
    messages,
    leafId,
    status: 'ready',
    error: null,
  };
}

/** A fetch of the conversation failed with `error` ({status, code, message}). */
export function failedLoad(conversation, error) {
  const code = error?.code ?? 'internal';
  return {
    ...conversation,
    status: code === 'not_found' ? 'missing' : 'failed',
    error: { code, message: error?.message ?? 'The conversation could not be loaded.' },
  };
}

// ---------- requests ----------

// The ids of the messages the page holds, in the order of the turns historyOf makes of
// them; null for a turn no message holds (the tool results it adds after an answer's
// calls).
function turnIds(messages) {
  return messages.flatMap((m) => {
    const count = historyOf([m]).length;
    return count === 0 ? [] : [m.id, ...Array(count - 1).fill(null)];
  });
}

// A chat request's turns: `message` when they are one question of plain text.
function turnsField(turns) {
  if (turns.length === 1 && turns[0].role === 'user' && typeof turns[0].content === 'string') {
    return { message: turns[0].content };
  }
  return { messages: turns };
}

/**
 * Ask for an answer to `base`, the branch whose last message is the question, already
 * in the conversation. A stored conversation gets `conversation_id`, `parent_id` (the
 * last message of `base` the store holds; null: a new root) and only the turns after
 * it (none: the answer to `parent_id` is regenerated); one not stored gets the whole
 * history. Returns {conversation, request, sentIds}: `sentIds[i]` is the message that
 * `request`'s i-th turn came from (null for a tool result the page adds), to be named
 * by the ack's `message_ids`.
 */
function ask(conversation, base, requestId) {
  const question = base[base.length - 1];
  const answer = { ...assistantMessage(requestId), parentId: question.id, local: true };
  const next = { ...conversation, messages: [...conversation.messages, answer], leafId: requestId };
  if (!conversation.id) {
    const turns = historyOf(base);
    return { conversation: next, request: { id: requestId, ...turnsField(turns) }, sentIds: turnIds(base) };
  }
  let last = base.length - 1;
  while (last >= 0 && storedIdOf(base[last]) === null) last -= 1;
  const request = {
    id: requestId,
    conversation_id: conversation.id,
    parent_id: last >= 0 ? storedIdOf(base[last]) : null,
  };
  const tail = base.slice(last + 1);
  if (tail.length === 0) return { conversation: next, request, sentIds: [] };
  // The stored message the new turns follow is not sent again; the tool results the
  // page answers its calls with are.
  const anchor = last >= 0 ? [base[last]] : [];
  const skip = anchor.length > 0 && base[last].role !== 'tool' && historyOf(anchor).length > 0 ? 1 : 0;
  const turns = historyOf([...anchor, ...tail]).slice(skip);
  const sentIds = turnIds([...anchor, ...tail]).slice(skip);
  return { conversation: next, request: { ...request, ...turnsField(turns) }, sentIds };
}

/** A new question at the end of the branch in view. */
export function prepareSend(conversation, text, images, { requestId, messageId }) {
  const path = pathTo(conversation.messages, conversation.leafId);
  const parent = path[path.length - 1];
  const question = { ...userMessage(messageId, text, images), parentId: parent?.id ?? null, local: true };
  const withQuestion = { ...conversation, messages: [...conversation.messages, question] };
  return ask(withQuestion, [...path, question], requestId);
}

/**
 * Another answer to the question `answerId` answers (a sibling of it); null when that
 * is not an answer to a question.
 */
export function prepareRegenerate(conversation, answerId, requestId) {
  const answer = conversation.messages.find((m) => m.id === answerId && m.role === 'assistant');
  const base = answer ? pathTo(conversation.messages, answer.parentId) : [];
  if (base.length === 0 || base[base.length - 1].role !== 'user') return null;
  // A failed attempt the store never kept gives way to the new one.
  const dropped = answer.status === 'error' && storedIdOf(answer) === null;
  const messages = dropped ? conversation.messages.filter((m) => m !== answer) : conversation.messages;
  return ask({ ...conversation, messages }, base, requestId);
}

/**
 * The question `userId` asked again with `text` (a sibling of it, under the same
 * parent), and an answer to it. Images go again only while the page holds their data.
 */
export function prepareEdit(conversation, userId, text, { requestId, messageId }) {
  const original = conversation.messages.find((m) => m.id === userId && m.role === 'user');
  if (!original) return null;
  const parentId = original.parentId ?? null;
  const images = (original.images ?? []).filter((image) => image.url?.startsWith('data:'));
  const question = { ...userMessage(messageId, text, images), parentId, local: true };
  const withQuestion = { ...conversation, messages: [...conversation.messages, question] };
  return ask(withQuestion, [...pathTo(conversation.messages, parentId), question], requestId);
}

/**
 * The `chat` ack of `requestId` ({ok: true, resume_token, conversation_id?,
 * message_ids?, answer_id?}): the resume token; and when the server stored the chat,
 * the conversation's id, each sent message's stored id, the answer's.
 */
export function acknowledge(conversation, requestId, ack, sentIds) {
  const messages = setResumeToken(conversation.messages, requestId, ack?.resume_token);
  if (typeof ack?.conversation_id !== 'string') {
    return messages === conversation.messages ? conversation : { ...conversation, messages };
  }
  const renames = new Map();
  (Array.isArray(ack.message_ids) ? ack.message_ids : []).forEach((storedId, index) => {
    const ownId = sentIds[index];
    if (ownId && typeof storedId === 'string') renames.set(ownId, storedId);
  });
  const answerId = typeof ack.answer_id === 'string' ? ack.answer_id : null;
  const renamed = messages.map((m) => {
    let next = m;
    if (renames.has(m.id)) next = { ...next, id: renames.get(m.id), sent: true };
    if (m.parentId && renames.has(m.parentId)) next = { ...next, parentId: renames.get(m.parentId) };
    if (answerId && m.id === requestId && m.role === 'assistant') next = { ...next, answerId };
    return next;
  });
  return {
    ...conversation,
    id: conversation.id ?? ack.conversation_id,
    status: conversation.status === 'new' ? 'ready' : conversation.status,
    messages: renamed,
    leafId: renames.get(conversation.leafId) ?? conversation.leafId,
  };
}

// ---------- many conversations ----------

/** The state with the conversation `key` replaced by `update(it)` (same state if unchanged). */
export function withConversation(state, key, update) {
  const conversation = state.conversations[key];
  if (!conversation) return state;
  const next = update(conversation);
  if (next === conversation) return state;
  return { ...state, conversations: { ...state.conversations, [key]: next } };
}

/** The state with every conversation's messages passed through `update`. */
export function mapMessages(state, update) {
  let conversations = state.conversations;
  for (const [key, conversation] of Object.entries(state.conversations)) {
    const messages = update(conversation.messages);
    if (messages === conversation.messages) continue;
    if (conversations === state.conversations) conversations = { ...conversations };
    conversations[key] = { ...conversation, messages };
  }
  return conversations === state.conversations ? state : { ...state, conversations };
}

/** The key of the conversation the server knows as `id`, or null. */
export function keyOf(state, id) {
  if (state.conversations[id]?.id === id) return id;
  for (const conversation of Object.values(state.conversations)) {
    if (conversation.id === id) return conversation.key;
  }
  return null;
}

/** The key of the conversation holding the answer to request `requestId`, or null. */
export function keyOfRequest(state, requestId) {
  for (const conversation of Object.values(state.conversations)) {
    if (conversation.messages.some((m) => m.id === requestId && m.role === 'assistant')) return conversation.key;
  }
  return null;
}

/** Every conversation's gap episodes as of `now` (streamState.noteGaps). */
export function noteAllGaps(state, now) {
  return mapMessages(state, (messages) => noteGaps(messages, now));
}

/**
 * Apply a batch of socket events (streamState.applyEvents), each in the conversation
 * that holds its answer. Returns the new state and the conversations whose answers
 * the store has just written ({key, id}): the page fetches their stored copy.
 */
export function applySocketEvents(state, events) {
  const byKey = new Map();
  const keys = new Map();
  for (const event of events) {
    const requestId = event.payload?.id;
    if (!keys.has(requestId)) keys.set(requestId, keyOfRequest(state, requestId));
    const key = keys.get(requestId);
    if (key === null) continue;
    if (!byKey.has(key)) byKey.set(key, []);
    byKey.get(key).push(event);
  }
  let next = state;
  const stored = [];
  for (const [key, batch] of byKey) {
    next = withConversation(next, key, (conversation) => {
      let messages = applyEvents(conversation.messages, batch);
      for (const { type, payload } of batch) {
        if ((type !== 'done' && type !== 'error') || typeof payload.answer_id !== 'string') continue;
        const saved = type === 'done' || payload.code !== 'history_unavailable';
        messages = messages.map((m) =>
          m.id === payload.id && m.role === 'assistant' ? { ...m, answerId: payload.answer_id, saved } : m,
        );
        if (saved && typeof payload.conversation_id === 'string') stored.push({ key, id: payload.conversation_id });
      }
      return messages === conversation.messages ? conversation : { ...conversation, messages };
    });
  }
  return { state: next, stored };
}

// ---------- what the tab keeps (sessionStorage) ----------

/**
 * What a reload needs: the conversation in view (its id and branch, the branch's
 * messages as streamState.toStored keeps them: a chat not stored has no other copy)
 * and every other answer still streaming, to resume it.
 */
export function toSession(state) {
  const view = state.conversations[state.viewKey];
  const path = view ? pathTo(view.messages, view.leafId) : [];
  const onPath = new Set(path.map((m) => m.id));
  const live = [];
  for (const conversation of Object.values(state.conversations)) {
    if (!conversation.id) continue;
    for (const m of conversation.messages) {
      if (m.role !== 'assistant' || m.status !== 'streaming') continue;
      if (conversation === view && onPath.has(m.id)) continue;
      live.push({ conversationId: conversation.id, answer: toStored([m])[0] });
    }
  }
  return {
    view: { id: view?.id ?? null, leafId: view?.leafId ?? null, title: view?.title ?? null },
    transcript: toStored(path),
    live,
  };
}

/** The state a reloaded tab starts from (`saved`: toSession's value, or parts of it). */
export function fromSession(saved, draftKey) {
  const view = saved?.view && typeof saved.view === 'object' ? saved.view : {};
  const id = typeof view.id === 'string' ? view.id : null;
  const path = fromStored(saved?.transcript);
  const key = id ?? draftKey;
  const conversations = {};
  const leafId = path.some((m) => m.id === view.leafId) ? view.leafId : latestLeaf(path);
  conversations[key] = {
    ...newConversation(key),
    id,
    title: typeof view.title === 'string' ? view.title : null,
    messages: path,
    leafId,
    status: id ? 'loading' : 'new',
  };
  for (const entry of Array.isArray(saved?.live) ? saved.live : []) {
    if (typeof entry?.conversationId !== 'string') continue;
    const [answer] = fromStored([entry.answer]);
    if (!answer || answer.role !== 'assistant') continue;
    const liveKey = entry.conversationId === id ? key : entry.conversationId;
    const conversation = conversations[liveKey] ?? storedConversation(entry.conversationId, 'partial');
    if (conversation.messages.some((m) => m.id === answer.id)) continue;
    conversations[liveKey] = { ...conversation, messages: [...conversation.messages, answer] };
  }
  return { conversations, viewKey: key };
}
