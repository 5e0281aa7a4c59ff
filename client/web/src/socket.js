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
