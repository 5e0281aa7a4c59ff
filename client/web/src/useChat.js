// The chat page's one hook: it owns the socket's listeners (named, registered in one place
// and removed on cleanup), the conversations the page holds (conversationState.js) and
// what the tab keeps of them in sessionStorage. Components get what it returns as props;
// the sidebar's list hears the socket's conversation events through `events`.
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { switchBranch as switchBranchLeaf } from './branches.js';
import {
  acknowledge,
  applySocketEvents,
  failedLoad,
  fromSession,
  keyOf,
  keyOfRequest,
  mergeServer,
  newConversation,
  noteAllGaps,
  prepareEdit,
  prepareRegenerate,
  prepareSend,
  storedConversation,
  toSession,
  viewOf,
  withConversation,
} from './conversationState.js';
import { getConversation } from './conversationsApi.js';
import { createFrameBuffer } from './frameBuffer.js';
import { refusalOf } from './refusal.js';
import { listen, resumeGaps, socket } from './socket.js';
import {
  applyError,
  failGap,
  isStreaming,
  markResumed,
  nextGapDue,
  resumeRequests,
  suspendStreaming,
  takeDueGaps,
} from './streamState.js';
import { useGapTimer } from './useGapTimer.js';

// sessionStorage, not localStorage: each tab keeps which conversation it shows (and a
// chat the server does not store) across a reload, and never another tab's. The
// conversations themselves are the server's.
const VIEW_KEY = 'chatstream.view.v1';
const TRANSCRIPT_KEY = 'chatstream.transcript.v1';
const LIVE_KEY = 'chatstream.live.v1';
const ACK_TIMEOUT_MS = 10_000;
const SAVE_WHILE_STREAMING_MS = 1_000;
const NO_CHAT_ACK = {
  code: 'timeout',
  message: 'The server did not acknowledge the request within 10 s.',
  retryable: true,
};
const NO_RESUME_ACK = {
  code: 'timeout',
  message: 'The server did not take up the interrupted answer within 10 s.',
  retryable: true,
};
const DELETED_ELSEWHERE = 'That chat was deleted in another tab or window.';

function draftKey() {
  return `draft:${crypto.randomUUID()}`;
}

function read(key, fallback) {
  try {
    const raw = sessionStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function loadSession() {
  return fromSession(
    { view: read(VIEW_KEY, null), transcript: read(TRANSCRIPT_KEY, []), live: read(LIVE_KEY, []) },
    draftKey(),
  );
}

function write(key, value, keep) {
  if (keep) sessionStorage.setItem(key, JSON.stringify(value));
  else sessionStorage.removeItem(key);
}

function saveSession(state) {
  try {
    const { view, transcript, live } = toSession(state);
    write(VIEW_KEY, view, view.id !== null || transcript.length > 0);
    write(TRANSCRIPT_KEY, transcript, transcript.length > 0);
    write(LIVE_KEY, live, live.length > 0);
  } catch {
    // Storage full or disabled: the chat still works; a reload shows the stored copy.
  }
}

function connectionNow() {
  if (socket.connected) return 'connected';
  return typeof navigator !== 'undefined' && navigator.onLine === false ? 'offline' : 'connecting';
}

function anyStreaming(state) {
  return Object.values(state.conversations).some((c) => isStreaming(c.messages));
}

function firstGapDue(state) {
  let due = null;
  for (const conversation of Object.values(state.conversations)) {
    const at = nextGapDue(conversation.messages);
    if (at !== null && (due === null || at < due)) due = at;
  }
  return due;
}

// The state with `update` applied to the messages of the conversation that holds the
// answer to request `requestId`.
function routeTo(state, requestId, update) {
  const key = keyOfRequest(state, requestId);
  if (key === null) return state;
  return withConversation(state, key, (c) => {
    const messages = update(c.messages);
    return messages === c.messages ? c : { ...c, messages };
  });
}

// The state without `left`, a chat the server never stored that the reader has left:
// there is nothing to come back to (a live answer keeps it).
function dropLeftDraft(state, left) {
  if (!left || left.key === state.viewKey || left.id || isStreaming(left.messages)) return state;
  const { [left.key]: gone, ...conversations } = state.conversations;
  return { ...state, conversations };
}

// A conversation the page may add to: not while it loads from scratch, nor once gone.
function canAddTo(conversation) {
  if (conversation.status === 'missing') return false;
  return !(conversation.status === 'loading' || conversation.status === 'partial') || conversation.messages.length > 0;
}

/**
 * `events`: {onConversation(payload), onConversationDeleted(id), onStored(id),
 * onReconnected()}, the socket's conversation events and this tab's own stored
 * chats, for the sidebar's list.
 */
export function useChat(events = {}) {
  const [state, setState] = useState(loadSession);
  const [connection, setConnection] = useState(connectionNow);
  // Why the server refused the last connection attempt (refusal.js), until one succeeds.
  const [refusal, setRefusal] = useState(null);
  // Something to say about the conversation in view (it was deleted elsewhere).
  const [viewNotice, setViewNotice] = useState(null);
  // The source of truth, readable synchronously by the actions; React state mirrors it.
  const current = useRef(state);
  const buffer = useRef(null);
  const outside = useRef(events);
  useEffect(() => {
    outside.current = events;
  });
  // Fetches of a conversation answer in any order: only the newest started is applied.
  const fetches = useRef({ issued: 0, applied: new Map() });

  const commit = useCallback((next) => {
    // Every change opens or closes the episode of a hole in seq, timed from now.
    const noted = noteAllGaps(next, Date.now());
    if (noted === current.current) return;
    current.current = noted;
    setState(noted);
  }, []);

  // Fetch the stored copy of conversation `key` and take it in (mergeServer).
  const load = useCallback(
    (key, keepLeaf) => {
      const conversation = current.current.conversations[key];
      if (!conversation?.id) return;
      fetches.current.issued += 1;
      const ticket = fetches.current.issued;
      const settle = (update) => {
        if (ticket < (fetches.current.applied.get(key) ?? 0)) return;
        fetches.current.applied.set(key, ticket);
        buffer.current?.flush();
        commit(withConversation(current.current, key, update));
      };
      getConversation(conversation.id).then(
        (data) => settle((c) => mergeServer(c, data, { keepLeaf })),
        (error) => settle((c) => failedLoad(c, error)),
      );
    },
    [commit],
  );

  const forget = useCallback(
    (id, notice = null) => {
      const state = current.current;
      const key = keyOf(state, id);
      if (key === null) return;
      for (const m of state.conversations[key].messages) {
        // Nobody will read the rest of it.
        if (m.role === 'assistant' && m.status === 'streaming') socket.emit('stop', { id: m.id });
      }
      const { [key]: gone, ...conversations } = state.conversations;
      let next = { ...state, conversations };
      if (state.viewKey === key) {
        const fresh = draftKey();
        next = { viewKey: fresh, conversations: { ...conversations, [fresh]: newConversation(fresh) } };
        setViewNotice(notice);
      }
      commit(next);
    },
    [commit],
  );

  useEffect(() => {
    const frames = createFrameBuffer((batch) => {
      const { state: next, stored } = applySocketEvents(current.current, batch);
      commit(next);
      // The store holds these answers now: its copy replaces the streamed one.
      const seen = new Set();
      for (const { key, id } of stored) {
        if (seen.has(key)) continue;
        seen.add(key);
        load(key, true);
        outside.current.onStored?.(id);
      }
    });
    buffer.current = frames;
    let connectedBefore = false;

    function onConnect() {
      setConnection('connected');
      setRefusal(null);
      // Answers cut off by a dropped connection or a reload continue where they stopped:
      // the server keeps them for a grace window and replays the chunks after `after`.
      for (const conversation of Object.values(current.current.conversations)) {
        for (const { id, token, after } of resumeRequests(conversation.messages)) {
          socket
            .timeout(ACK_TIMEOUT_MS)
            .emitWithAck('resume', { id, token, after })
            .then((ack) => {
              frames.flush();
              commit(
                routeTo(current.current, id, (messages) =>
                  ack && ack.ok ? markResumed(messages, id) : applyError(messages, { id, ...(ack && ack.error) }),
                ),
              );
            })
            .catch(() => {
              frames.flush();
              commit(routeTo(current.current, id, (messages) => applyError(messages, { id, ...NO_RESUME_ACK })));
            });
        }
      }
      // Back after a drop: what happened meanwhile (other tabs' chats) is fetched again.
      if (connectedBefore) {
        outside.current.onReconnected?.();
        if (current.current.conversations[current.current.viewKey]?.id) load(current.current.viewKey, true);
      }
      connectedBefore = true;
    }
    function onDisconnect() {
      frames.flush();
      let next = current.current;
      for (const key of Object.keys(next.conversations)) {
        next = withConversation(next, key, (c) => {
          const messages = suspendStreaming(c.messages, {
            code: 'disconnected',
            message: 'The connection dropped before the answer finished.',
            retryable: true,
          });
          return messages === c.messages ? c : { ...c, messages };
        });
      }
      commit(next);
      setConnection(socket.active ? 'reconnecting' : 'offline');
    }
    function onConnectError(error) {
      const refused = refusalOf(error);
      // socket.io-client goes on retrying a refused handshake, with backoff: right for
      // server_full, pointless for a code that retrying cannot fix.
      if (refused && !refused.retryable) socket.disconnect();
      setRefusal(refused);
      if (socket.active) setConnection('reconnecting');
      else setConnection(refused ? 'refused' : 'offline');
    }
    // Stamped on arrival: the frame that applies them comes a little later.
    function onChunk(payload) {
      frames.push({ type: 'chunk', payload, receivedAt: Date.now() });
    }
    function onDone(payload) {
      frames.push({ type: 'done', payload, receivedAt: Date.now() });
    }
    function onError(payload) {
      frames.push({ type: 'error', payload, receivedAt: Date.now() });
    }
    // The server's moderation took chunks of an answer back (streamState.applyRetract).
    function onRetract(payload) {
      frames.push({ type: 'retract', payload, receivedAt: Date.now() });
    }
    // Another tab (or this one) of the same owner created or renamed a conversation.
    function onConversation(payload) {
      if (!payload || typeof payload.id !== 'string') return;
      outside.current.onConversation?.(payload);
      const key = keyOf(current.current, payload.id);
      if (key === null || typeof payload.title !== 'string') return;
      commit(
        withConversation(current.current, key, (c) => (c.title === payload.title ? c : { ...c, title: payload.title })),
      );
    }
    function onConversationDeleted(payload) {
      if (!payload || typeof payload.id !== 'string') return;
      outside.current.onConversationDeleted?.(payload.id);
      forget(payload.id, DELETED_ELSEWHERE);
    }
    function onBrowserOffline() {
      setConnection('offline');
    }
    function onBrowserOnline() {
      setConnection(socket.connected ? 'connected' : 'reconnecting');
      if (!socket.active) socket.connect();
    }

    const unlisten = listen(socket, {
      connect: onConnect,
      disconnect: onDisconnect,
      connect_error: onConnectError,
      chunk: onChunk,
      done: onDone,
      error: onError,
      retract: onRetract,
      conversation: onConversation,
      conversation_deleted: onConversationDeleted,
    });
    window.addEventListener('offline', onBrowserOffline);
    window.addEventListener('online', onBrowserOnline);
    socket.connect();

    return () => {
      unlisten();
      window.removeEventListener('offline', onBrowserOffline);
      window.removeEventListener('online', onBrowserOnline);
      frames.dispose();
      buffer.current = null;
      socket.disconnect();
    };
  }, [commit, load, forget]);

  // A reloaded tab shows what it kept at once, then the stored copy.
  useEffect(() => {
    const { viewKey, conversations } = current.current;
    if (conversations[viewKey]?.id) load(viewKey, true);
  }, [load]);

  // Save at once when nothing streams; while an answer streams, at most once a second.
  const streamingAnywhere = anyStreaming(state);
  useEffect(() => {
    if (!streamingAnywhere) {
      saveSession(state);
      return undefined;
    }
    const timer = setTimeout(() => saveSession(current.current), SAVE_WHILE_STREAMING_MS);
    return () => clearTimeout(timer);
  }, [state, streamingAnywhere]);

  useEffect(() => {
    function onPageHide() {
      saveSession(current.current);
    }
    window.addEventListener('pagehide', onPageHide);
    return () => window.removeEventListener('pagehide', onPageHide);
  }, []);

  // A hole in seq that outlasts GAP_MS (chunks lost on the way) is asked for again with
  // `resume` on this connection; one that cannot be filled ends the answer with a
  // retryable `lost_chunks` error, and the Retry button.
  const fillGaps = useCallback(() => {
    buffer.current?.flush();
    let next = current.current;
    const resumes = [];
    for (const key of Object.keys(next.conversations)) {
      next = withConversation(next, key, (c) => {
        const due = takeDueGaps(c.messages, Date.now());
        resumes.push(...due.resumes);
        return due.messages === c.messages ? c : { ...c, messages: due.messages };
      });
    }
    commit(next);
    resumeGaps(socket, resumes, (id, error) => {
      buffer.current?.flush();
      commit(routeTo(current.current, id, (messages) => failGap(messages, id, error)));
    });
  }, [commit]);
  useGapTimer(firstGapDue(state), fillGaps);

  // Send the `chat` a plan (conversationState's prepare*) makes, to `model` (null: the
  // server's default) with Chat Completions `options` (null: none).
  const start = useCallback(
    (plan, { model = null, options = null } = {}) => {
      if (!plan) return false;
      const { conversation, request, sentIds } = plan;
      if (model) request.model = model;
      if (options) request.options = options;
      // The answer exists before the request leaves: chunks may beat the ack.
      commit(withConversation(current.current, conversation.key, () => conversation));
      setViewNotice(null);
      socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck('chat', request)
        .then((ack) => {
          buffer.current?.flush();
          const key = keyOfRequest(current.current, request.id);
          if (key === null) return;
          if (ack && ack.ok) {
            commit(withConversation(current.current, key, (c) => acknowledge(c, request.id, ack, sentIds)));
            if (typeof ack.conversation_id === 'string') outside.current.onStored?.(ack.conversation_id);
          } else {
            commit(
              routeTo(current.current, request.id, (messages) =>
                applyError(messages, { id: request.id, ...(ack && ack.error) }),
              ),
            );
          }
        })
        .catch(() => {
          buffer.current?.flush();
          const noAck = { id: request.id, ...NO_CHAT_ACK };
          commit(routeTo(current.current, request.id, (messages) => applyError(messages, noAck)));
        });
      return true;
    },
    [commit],
  );

  const inView = () => current.current.conversations[current.current.viewKey];
  const idle = (conversation) => !isStreaming(conversation.messages) && canAddTo(conversation);

  // A question: its text and attached images (images.js), asked with `settings`
  // ({model, options}, see start).
  const send = useCallback(
    (text, images = [], settings = {}) => {
      buffer.current?.flush();
      const content = text.trim();
      const conversation = inView();
      if ((!content && images.length === 0) || !idle(conversation)) return false;
      const ids = { requestId: crypto.randomUUID(), messageId: crypto.randomUUID() };
      return start(prepareSend(conversation, content, images, ids), settings);
    },
    [start],
  );

  const stop = useCallback(() => {
    for (const message of inView().messages) {
      if (message.role === 'assistant' && message.status === 'streaming') {
        // The server answers with `done` (finish_reason "cancelled") for this id.
        socket.emit('stop', { id: message.id });
      }
    }
  }, []);

  // Another answer to the question of the last answer in view (also its Retry).
  const regenerate = useCallback(
    (settings = {}) => {
      buffer.current?.flush();
      const conversation = inView();
      if (!idle(conversation)) return;
      const { shown } = viewOf(conversation);
      const last = shown[shown.length - 1];
      if (last?.role === 'assistant') start(prepareRegenerate(conversation, last.id, crypto.randomUUID()), settings);
    },
    [start],
  );

  // The question `userId` asked again as `text`: a new branch beside it.
  const edit = useCallback(
    (userId, text, settings = {}) => {
      buffer.current?.flush();
      const content = text.trim();
      const conversation = inView();
      if (!content || !idle(conversation)) return false;
      const ids = { requestId: crypto.randomUUID(), messageId: crypto.randomUUID() };
      return start(prepareEdit(conversation, userId, content, ids), settings);
    },
    [start],
  );

  // Show the branch through the sibling `delta` places from message `id`.
  const switchBranch = useCallback(
    (id, delta) => {
      const { viewKey } = current.current;
      commit(
        withConversation(current.current, viewKey, (c) => {
          const leafId = switchBranchLeaf(c.messages, id, delta);
          return leafId === null || leafId === c.leafId ? c : { ...c, leafId };
        }),
      );
    },
    [commit],
  );

  const open = useCallback(
    (id) => {
      buffer.current?.flush();
      setViewNotice(null);
      let next = current.current;
      const left = next.conversations[next.viewKey];
      let key = keyOf(next, id);
      if (key === null) {
        key = id;
        next = { ...next, conversations: { ...next.conversations, [id]: storedConversation(id) } };
      }
      next = withConversation({ ...next, viewKey: key }, key, (c) =>
        c.status === 'partial' || c.status === 'failed' || c.status === 'missing' ? { ...c, status: 'loading' } : c,
      );
      commit(dropLeftDraft(next, left));
      load(key, false);
    },
    [commit, load],
  );

  const newChat = useCallback(() => {
    buffer.current?.flush();
    setViewNotice(null);
    const left = inView();
    if (left && !left.id && left.messages.length === 0) return;
    const key = draftKey();
    const next = { ...current.current, viewKey: key };
    next.conversations = { ...next.conversations, [key]: newConversation(key) };
    commit(dropLeftDraft(next, left));
  }, [commit]);

  const reload = useCallback(() => load(current.current.viewKey, true), [load]);

  const view = state.conversations[state.viewKey];
  const { shown, positions } = useMemo(() => viewOf(view), [view]);
  return {
    viewKey: state.viewKey,
    conversationId: view.id,
    title: view.title,
    status: view.status,
    loadError: view.error,
    viewNotice,
    messages: shown,
    positions,
    streaming: isStreaming(view.messages),
    canAdd: canAddTo(view),
    connection,
    notice: refusal ? refusal.text : null,
    send,
    stop,
    regenerate,
    edit,
    switchBranch,
    open,
    newChat,
    forget,
    reload,
  };
}
