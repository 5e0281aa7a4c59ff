// The chat page's one hook: it owns the socket's listeners (named, registered in one place
// and removed on cleanup), the transcript and its copy in sessionStorage. Components get
// what it returns as props.
import { useCallback, useEffect, useRef, useState } from 'react';
import { createFrameBuffer } from './frameBuffer.js';
import { refusalOf } from './refusal.js';
import { listen, resumeGaps, socket } from './socket.js';
import {
  applyError,
  applyEvents,
  assistantMessage,
  dropLastAnswer,
  failGap,
  fromStored,
  historyOf,
  isStreaming,
  markResumed,
  nextGapDue,
  noteGaps,
  resumeRequests,
  setResumeToken,
  suspendStreaming,
  takeDueGaps,
  toStored,
  userMessage,
} from './streamState.js';
import { useGapTimer } from './useGapTimer.js';

// sessionStorage, not localStorage: each tab keeps its own conversation across a reload
// and never sees another tab's.
const STORAGE_KEY = 'chatstream.transcript.v1';
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

function loadTranscript() {
  try {
    return fromStored(JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? '[]'));
  } catch {
    return [];
  }
}

function saveTranscript(messages) {
  try {
    if (messages.length === 0) sessionStorage.removeItem(STORAGE_KEY);
    else sessionStorage.setItem(STORAGE_KEY, JSON.stringify(toStored(messages)));
  } catch {
    // Storage full or disabled: the conversation still works, it just won't survive a reload.
  }
}

function connectionNow() {
  if (socket.connected) return 'connected';
  return typeof navigator !== 'undefined' && navigator.onLine === false ? 'offline' : 'connecting';
}

export function useChat() {
  const [messages, setMessages] = useState(loadTranscript);
  const [connection, setConnection] = useState(connectionNow);
  // Why the server refused the last connection attempt (refusal.js), until one succeeds.
  const [refusal, setRefusal] = useState(null);
  // The transcript's source of truth, readable synchronously by send/stop/regenerate;
  // React state mirrors it for rendering.
  const current = useRef(messages);
  const buffer = useRef(null);

  const commit = useCallback((next) => {
    // Every change opens or closes the episode of a hole in seq, timed from now.
    const noted = noteGaps(next, Date.now());
    if (noted === current.current) return;
    current.current = noted;
    setMessages(noted);
  }, []);

  useEffect(() => {
    const frames = createFrameBuffer((events) => commit(applyEvents(current.current, events)));
    buffer.current = frames;

    function onConnect() {
      setConnection('connected');
      setRefusal(null);
      // Answers cut off by a dropped connection or a reload continue where they stopped:
      // the server keeps them for a grace window and replays the chunks after `after`.
      for (const { id, token, after } of resumeRequests(current.current)) {
        socket
          .timeout(ACK_TIMEOUT_MS)
          .emitWithAck('resume', { id, token, after })
          .then((ack) => {
            frames.flush();
            if (ack && ack.ok) commit(markResumed(current.current, id));
            else commit(applyError(current.current, { id, ...(ack && ack.error) }));
          })
          .catch(() => {
            frames.flush();
            commit(applyError(current.current, { id, ...NO_RESUME_ACK }));
          });
      }
    }
    function onDisconnect() {
      frames.flush();
      commit(
        suspendStreaming(current.current, {
          code: 'disconnected',
          message: 'The connection dropped before the answer finished.',
          retryable: true,
        }),
      );
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
  }, [commit]);

  // Save at once when nothing streams; while an answer streams, at most once a second.
  const streaming = isStreaming(messages);
  useEffect(() => {
    if (!streaming) {
      saveTranscript(messages);
      return undefined;
    }
    const timer = setTimeout(() => saveTranscript(current.current), SAVE_WHILE_STREAMING_MS);
    return () => clearTimeout(timer);
  }, [messages, streaming]);

  useEffect(() => {
    function onPageHide() {
      saveTranscript(current.current);
    }
    window.addEventListener('pagehide', onPageHide);
    return () => window.removeEventListener('pagehide', onPageHide);
  }, []);

  // A hole in seq that outlasts GAP_MS (chunks lost on the way) is asked for again with
  // `resume` on this connection; one that cannot be filled ends the answer with a
  // retryable `lost_chunks` error, and the Retry button.
  const fillGaps = useCallback(() => {
    buffer.current?.flush();
    const due = takeDueGaps(current.current, Date.now());
    commit(due.messages);
    resumeGaps(socket, due.resumes, (id, error) => {
      buffer.current?.flush();
      commit(failGap(current.current, id, error));
    });
  }, [commit]);
  useGapTimer(nextGapDue(messages), fillGaps);

  // Ask for an answer to `base`, whose last turn is the user's: of `model` (null: the
  // server's default), with Chat Completions `options` (null: none).
  const ask = useCallback(
    (base, { model = null, options = null } = {}) => {
      const id = crypto.randomUUID();
      const request = { id, messages: historyOf(base) };
      if (model) request.model = model;
      if (options) request.options = options;
      // The answer's state exists before the request leaves: chunks may beat the ack.
      commit([...base, assistantMessage(id)]);
      socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck('chat', request)
        .then((ack) => {
          buffer.current?.flush();
          if (ack && ack.ok) commit(setResumeToken(current.current, id, ack.resume_token));
          else commit(applyError(current.current, { id, ...(ack && ack.error) }));
        })
        .catch(() => {
          buffer.current?.flush();
          commit(applyError(current.current, { id, ...NO_CHAT_ACK }));
        });
    },
    [commit],
  );

  // A question: its text and attached images (images.js), asked with `settings`
  // ({model, options}, see ask).
  const send = useCallback(
    (text, images = [], settings = {}) => {
      buffer.current?.flush();
      const content = text.trim();
      if ((!content && images.length === 0) || isStreaming(current.current)) return false;
      ask([...current.current, userMessage(crypto.randomUUID(), content, images)], settings);
      return true;
    },
    [ask],
  );

  const stop = useCallback(() => {
    for (const message of current.current) {
      if (message.role === 'assistant' && message.status === 'streaming') {
        // The server answers with `done` (finish_reason "cancelled") for this id.
        socket.emit('stop', { id: message.id });
      }
    }
  }, []);

  const regenerate = useCallback(
    (settings = {}) => {
      buffer.current?.flush();
      if (isStreaming(current.current)) return;
      const base = dropLastAnswer(current.current);
      if (base.length > 0 && base[base.length - 1].role === 'user') ask(base, settings);
    },
    [ask],
  );

  const newChat = useCallback(() => {
    stop();
    buffer.current?.flush();
    commit([]);
  }, [commit, stop]);

  const notice = refusal ? refusal.text : null;
  return { messages, streaming, connection, notice, send, stop, regenerate, newChat };
}
