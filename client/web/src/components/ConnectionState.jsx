const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  refused: 'Refused',
};

/** A dot and a word for the socket's state: connecting, connected, reconnecting, offline or
 * refused. */
export default function ConnectionState({ state }) {
  return (
    <span className={`connection ${state}`} data-testid="connection-state" data-state={state} role="status">
      <span className="dot" aria-hidden="true" />
      {LABELS[state] ?? state}
    </span>
  );
}
