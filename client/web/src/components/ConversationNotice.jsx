// What the page says when the conversation in view cannot be shown: it no longer exists
// (or is not this owner's: the server answers both alike), or the store failed.
const EXPLAIN = {
  not_found: 'This chat does not exist: it was deleted, or it is not yours.',
  history_unavailable: 'Saved chats are unavailable right now: the server could not read them.',
};

/** The load error of the conversation in view, or a notice about it; nothing otherwise. */
export default function ConversationNotice({ error, notice, onRetry, onNewChat }) {
  if (!error && !notice) return null;
  return (
    <div className="conversation-notice" role="alert" data-testid="conversation-notice" data-code={error?.code ?? ''}>
      {error ? (
        <p>
          {EXPLAIN[error.code] ?? 'This chat could not be loaded.'}{' '}
          <span className="conversation-notice-detail">
            <code className="error-code">{error.code}</code> {error.message}
          </span>
        </p>
      ) : (
        <p>{notice}</p>
      )}
      <div className="conversation-notice-actions">
        {error && error.code !== 'not_found' && onRetry && (
          <button type="button" className="button small" onClick={onRetry} data-testid="conversation-retry">
            Try again
          </button>
        )}
        {error && onNewChat && (
          <button type="button" className="button small" onClick={onNewChat}>
            New chat
          </button>
        )}
      </div>
    </div>
  );
}
