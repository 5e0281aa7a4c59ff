// The demo page's one hook: N panes, each with a Socket.IO connection of its own (as if
// each were a separate tab). Every socket's listeners are named, registered here and
// removed when the pane goes. Each pane records the id of every chunk/done/error it
// receives and compares it with the ids it sent: that is the isolation check.
import { useCallback, useEffect, useRef, useState } from 'react';
import { createFrameBuffer } from '../frameBuffer.js';
import { refusalOf } from '../refusal.js';
import { createSocket, listen, resumeGaps } from '../socket.js';
import {
  applyEvents,
  applyError,
  assistantMessage,
  failGap,
  failStreaming,
  nextGapDue,
  noteGaps,
  setResumeToken,
  takeDueGaps,
} from '../streamState.js';
import { useGapTimer } from '../useGapTimer.js';
import { PROMPTS } from './prompts.js';

export const MIN_PANES = 1;
export const MAX_PANES = 12;
const ACK_TIMEOUT_MS = 10_000;

function emptyPane(key) {
  return {
    key,
    connection: 'connecting',
    notice: null, // why the server refused the connection (refusal.js)
    sid: null,
    prompt: null,
    answer: null, // the current request's assistant message (see streamState.js)
    sentAt: 0,
    firstChunkAt: 0,
    lastChunkAt: 0,
    chunks: 0,
    sent: 0, // requests sent
    received: 0, // events received that carried an id
    foreign: [], // ids received that this pane never sent
  };
}

// A pane's answer changed by a function over message arrays (see streamState.js).
function setAnswer(answer, change) {
  return answer ? change([answer])[0] : answer;
}

// Apply one pane's buffered events: record every id it receives, then the stream itself.
function applyPaneEvents(pane, events, sentIds) {
  let { chunks, firstChunkAt, lastChunkAt, received } = pane;
  let foreign = pane.foreign;
  for (const { type, payload, at } of events) {
    const id = payload && payload.id;
    if (id !== undefined) {
      received += 1;
      if (!sentIds.has(id) && !foreign.includes(id)) foreign = [...foreign, id];
    }
    if (type === 'chunk' && pane.answer && id === pane.answer.id) {
      chunks += 1;
      if (!firstChunkAt) firstChunkAt = at;
      lastChunkAt = at;
    }
  }
  const messages = pane.answer ? noteGaps(applyEvents([pane.answer], events), Date.now()) : [];
  return { ...pane, chunks, firstChunkAt, lastChunkAt, received, foreign, answer: messages[0] ?? null };
}

export function usePanes(initialCount = 4) {
  const [count, setCountState] = useState(initialCount);
  const [panes, setPanes] = useState(() => Array.from({ length: initialCount }, (_, i) => emptyPane(i)));
  const current = useRef(panes); // source of truth; React state mirrors it
  const links = useRef(new Map()); // pane key -> {socket, sentIds, close}
  const round = useRef(0);
  const frames = useRef(null);

  const commit = useCallback((next) => {
    current.current = next;
    setPanes(next);
  }, []);

  const update = useCallback(
    (key, change) => {
      commit(current.current.map((pane) => (pane.key === key ? change(pane) : pane)));
    },
    [commit],
  );

  // One frame buffer for every pane: one render per frame however many panes stream.
  useEffect(() => {
    const buffer = createFrameBuffer((events) => {
      const byPane = new Map();
      for (const event of events) {
        if (!byPane.has(event.key)) byPane.set(event.key, []);
        byPane.get(event.key).push(event);
      }
      commit(
        current.current.map((pane) => {
          const batch = byPane.get(pane.key);
          const link = links.current.get(pane.key);
          return batch && link ? applyPaneEvents(pane, batch, link.sentIds) : pane;
        }),
      );
    });
    frames.current = buffer;
    return () => {
      buffer.dispose();
      frames.current = null;
    };
  }, [commit]);

  const openPane = useCallback(
    (key) => {
      const socket = createSocket();
      const sentIds = new Set();
      const push = (type, payload) => frames.current?.push({ key, type, payload, at: performance.now() });

      function onConnect() {
        update(key, (pane) => ({ ...pane, connection: 'connected', notice: null, sid: socket.id }));
      }
      function onDisconnect() {
        frames.current?.flush();
        update(key, (pane) => ({
          ...pane,
          connection: socket.active ? 'reconnecting' : 'offline',
          answer: pane.answer
            ? failStreaming([pane.answer], {
                code: 'disconnected',
                message: 'The connection dropped.',
                retryable: true,
              })[0]
            : null,
        }));
      }
      function onConnectError(error) {
        const refused = refusalOf(error);
        // As on the chat page: retried with backoff only when retrying can help.
        if (refused && !refused.retryable) socket.disconnect();
        const connection = socket.active ? 'reconnecting' : refused ? 'refused' : 'offline';
        update(key, (pane) => ({ ...pane, connection, notice: refused ? refused.text : null }));
      }
      function onChunk(payload) {
        push('chunk', payload);
      }
      function onDone(payload) {
        push('done', payload);
      }
      function onError(payload) {
        push('error', payload);
      }

      const unlisten = listen(socket, {
        connect: onConnect,
        disconnect: onDisconnect,
        connect_error: onConnectError,
        chunk: onChunk,
        done: onDone,
        error: onError,
      });
      socket.connect();

      function close() {
        unlisten();
        socket.disconnect();
      }
      links.current.set(key, { socket, sentIds, close });
    },
    [update],
  );

  // Open a connection for every pane that lacks one and close those of removed panes.
  useEffect(() => {
    for (let key = 0; key < count; key += 1) {
      if (!links.current.has(key)) openPane(key);
    }
    for (const [key, link] of links.current) {
      if (key >= count) {
        link.close();
        links.current.delete(key);
      }
    }
  }, [count, openPane]);

  // Close every connection when the page goes.
  useEffect(
    () => () => {
      for (const link of links.current.values()) link.close();
      links.current.clear();
    },
    [],
  );

  const setCount = useCallback(
    (value) => {
      const n = Math.max(MIN_PANES, Math.min(MAX_PANES, Math.round(Number(value)) || MIN_PANES));
      const kept = current.current.slice(0, n);
      for (let key = kept.length; key < n; key += 1) kept.push(emptyPane(key));
      commit(kept);
      setCountState(n);
    },
    [commit],
  );

  const sendAll = useCallback(() => {
    frames.current?.flush();
    const r = round.current;
    round.current += 1;
    const now = performance.now();
    const requests = [];
    const next = current.current.map((pane) => {
      const link = links.current.get(pane.key);
      if (!link || pane.answer?.status === 'streaming') return pane;
      const id = crypto.randomUUID();
      const prompt = PROMPTS[(pane.key + r) % PROMPTS.length];
      link.sentIds.add(id);
      requests.push({ link, id, prompt, key: pane.key });
      return {
        ...pane,
        prompt,
        answer: assistantMessage(id),
        sentAt: now,
        firstChunkAt: 0,
        lastChunkAt: 0,
        chunks: 0,
        sent: pane.sent + 1,
      };
    });
    // Every answer's state exists before its request leaves: chunks may beat the ack.
    commit(next);
    for (const { link, id, prompt, key } of requests) {
      const messages = [{ role: 'user', content: prompt }];
      link.socket
        .timeout(ACK_TIMEOUT_MS)
        // A demonstration, not a conversation to keep: nothing goes in the store.
        .emitWithAck('chat', { id, messages, store: false })
        .then((ack) => {
          if (ack && ack.ok) {
            // The token lets the pane ask again for chunks lost on the way.
            const keep = (messages) => setResumeToken(messages, id, ack.resume_token);
            update(key, (pane) => ({ ...pane, answer: setAnswer(pane.answer, keep) }));
          } else if (ack && ack.ok === false) {
            update(key, (pane) => ({ ...pane, answer: applyError([pane.answer], { id, ...ack.error })[0] }));
          }
        })
        .catch(() => {
          update(key, (pane) => ({
            ...pane,
            answer: applyError([pane.answer], {
              id,
              code: 'timeout',
              message: 'No acknowledgement within 10 s.',
              retryable: true,
            })[0],
          }));
        });
    }
  }, [commit, update]);

  // A hole in seq that outlasts GAP_MS is asked for again on the pane's own connection;
  // one that cannot be filled ends the pane's answer with `lost_chunks`.
  const fillGaps = useCallback(() => {
    frames.current?.flush();
    const now = Date.now();
    const sends = [];
    commit(
      current.current.map((pane) => {
        const link = links.current.get(pane.key);
        if (!pane.answer || !link) return pane;
        const due = takeDueGaps([pane.answer], now);
        if (due.resumes.length > 0) sends.push({ key: pane.key, socket: link.socket, resumes: due.resumes });
        return due.messages[0] === pane.answer ? pane : { ...pane, answer: due.messages[0] };
      }),
    );
    for (const { key, socket, resumes } of sends) {
      resumeGaps(socket, resumes, (id, error) => {
        frames.current?.flush();
        update(key, (pane) => ({ ...pane, answer: setAnswer(pane.answer, (m) => failGap(m, id, error)) }));
      });
    }
  }, [commit, update]);
  useGapTimer(nextGapDue(panes.flatMap((pane) => (pane.answer ? [pane.answer] : []))), fillGaps);

  const stopAll = useCallback(() => {
    for (const pane of current.current) {
      const link = links.current.get(pane.key);
      if (link && pane.answer?.status === 'streaming') link.socket.emit('stop', { id: pane.answer.id });
    }
  }, []);

  return { panes, count, setCount, sendAll, stopAll };
}
