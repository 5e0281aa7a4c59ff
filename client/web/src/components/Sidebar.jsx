import { memo, useMemo } from 'react';
import { groupByDay } from '../dayGroups.js';
import ConversationItem from './ConversationItem.jsx';

function Problem({ error, onRetry }) {
  return (
    <div className="sidebar-problem" role="alert" data-testid="sidebar-error">
      <p>
        <code className="error-code">{error.code}</code> {error.message}
      </p>
      {onRetry && (
        <button type="button" className="button small" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

/**
 * The owner's conversations, grouped by day (Today, Yesterday, Previous 7 days, then by
 * month), newest first; a search over titles and messages; New chat. On a narrow screen
 * it lies over the page while open.
 */
function Sidebar({
  open,
  items,
  query,
  onQuery,
  status,
  error,
  actionError,
  activeId,
  hasMore,
  onLoadMore,
  onRetry,
  onOpen,
  onNewChat,
  canNewChat,
  onRename,
  onDelete,
  onClose,
}) {
  const groups = useMemo(() => groupByDay(items), [items]);
  const searching = query.trim() !== '';
  return (
    <aside
      id="sidebar"
      className={`sidebar${open ? ' is-open' : ''}`}
      aria-label="Chats"
      data-testid="sidebar"
      data-open={open}
    >
      <div className="sidebar-head">
        <button
          type="button"
          className="button small new-chat"
          onClick={onNewChat}
          disabled={!canNewChat}
          data-testid="new-chat"
        >
          <span aria-hidden="true">+</span> New chat
        </button>
        <button
          type="button"
          className="sidebar-close"
          onClick={onClose}
          aria-label="Close the list of chats"
          data-testid="sidebar-close"
        >
          ×
        </button>
      </div>
      <div className="sidebar-search" role="search">
        <label className="visually-hidden" htmlFor="conversation-search">
          Search chats
        </label>
        <input
          id="conversation-search"
          type="search"
          value={query}
          onChange={(event) => onQuery(event.target.value)}
          placeholder="Search chats"
          autoComplete="off"
          data-testid="conversation-search"
        />
      </div>
      {actionError && <Problem error={actionError} />}
      <nav className="conversations" aria-label="Chats" aria-busy={status === 'loading'}>
        {status === 'failed' && error && <Problem error={error} onRetry={onRetry} />}
        {status === 'ready' && items.length === 0 && (
          <p className="sidebar-empty" data-testid="conversations-empty">
            {searching ? 'No chat matches.' : 'Your chats will show here.'}
          </p>
        )}
        {groups.map((group) => (
          <section key={group.label} className="conversation-group" data-testid="conversation-group">
            <h2 className="conversation-group-label" data-testid="conversation-group-label">
              {group.label}
            </h2>
            <ul data-testid="conversation-list">
              {group.items.map((item) => (
                <ConversationItem
                  key={item.id}
                  item={item}
                  active={item.id === activeId}
                  onOpen={onOpen}
                  onRename={onRename}
                  onDelete={onDelete}
                />
              ))}
            </ul>
          </section>
        ))}
        {hasMore && (
          <button type="button" className="button ghost small load-more" onClick={onLoadMore} data-testid="load-more">
            Show more
          </button>
        )}
      </nav>
    </aside>
  );
}

export default memo(Sidebar);
