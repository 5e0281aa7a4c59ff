// The only module that creates Socket.IO connections.
// The page is served by the same Flask service, so io() with no URL reaches /socket.io on
// the page's own origin (and `npm run dev` proxies that path to the service).
import { io } from 'socket.io-client';

/** The chat page's one connection; useChat connects it. */
export const socket = io({ autoConnect: false });

/** A connection of its own, as a separate tab would have: the demo opens one per pane. */
export function createSocket() {
  return io({ autoConnect: false, forceNew: true, multiplex: false });
}

/**
 * Registers named handlers on a socket; returns the function that removes exactly them.
 * @param {import('socket.io-client').Socket} target
 * @param {Record<string, (...args: any[]) => void>} handlers
 */
export function listen(target, handlers) {
  const entries = Object.entries(handlers);
  for (const [event, handler] of entries) target.on(event, handler);
  return () => {
    for (const [event, handler] of entries) target.off(event, handler);
  };
}

/**
 * Sends `resume` for answers with a hole in seq, on the connection they stream on; the
 * server replays every chunk after `after` there (duplicates are dropped by seq).
 * `onNegative(id, error)` hears a negative ack; a missing one is left to the next try.
 * @param {import('socket.io-client').Socket} target
 * @param {{id: string, token: string, after: number}[]} resumes
 * @param {(id: string, error: {code?: string, message?: string} | undefined) => void} onNegative
 */
export function resumeGaps(target, resumes, onNegative, ackTimeoutMs = 10_000) {
  for (const request of resumes) {
    target
      .timeout(ackTimeoutMs)
      .emitWithAck('resume', request)
      .then((ack) => {
        if (!(ack && ack.ok)) onNegative(request.id, ack && ack.error);
      })
      .catch(() => {});
  }
}
