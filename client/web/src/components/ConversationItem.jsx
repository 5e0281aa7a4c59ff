import { memo, useEffect, useRef, useState } from 'react';
import { exportUrl } from '../conversationsApi.js';

const UNTITLED = 'New chat';

/** The title being renamed: Enter (or leaving the box) saves, Escape gives up. */
function RenameBox({ title, onSave, onCancel }) {
  const [text, setText] = useState(title);
  const done = useRef(false);
  const finish = (save) => {
    if (done.current) return;
    done.current = true;
    const value = text.trim();
    if (save && value !== '' && value !== title) onSave(value);
    else onCancel();
  };
  return (
    <form
      className="rename"
      onSubmit={(event) => {
        event.preventDefault();
        finish(true);
      }}
    >
      <input
        value={text}
        maxLength={200}
        onChange={(event) => setText(event.target.value)}
        onKeyDown={(event) => {
          if (event.key === 'Escape') finish(false);
        }}
        onBlur={() => finish(true)}
        aria-label="Chat title"
        data-testid="rename-input"
        autoFocus
      />
    </form>
  );
}

/**
 * One conversation in the sidebar: its title opens it; its menu renames it, exports it
 * (Markdown, JSON) or deletes it, after asking.
 */
function ConversationItem({ item, active, onOpen, onRename, onDelete }) {
  const [menu, setMenu] = useState(false);
  const [renaming, setRenaming] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const root = useRef(null);
  const title = item.title || UNTITLED;
  // After the click: a link taken out of the page before its download starts would
  // not start it.
  const closeSoon = () => setTimeout(() => setMenu(false), 0);

  // The menu closes on a click elsewhere, or Escape.
  useEffect(() => {
    if (!menu) return undefined;
    function onPointerDown(event) {
      if (!root.current?.contains(event.target)) setMenu(false);
    }
    function onKeyDown(event) {
      if (event.key === 'Escape') setMenu(false);
    }
    document.addEventListener('pointerdown', onPointerDown);
    document.addEventListener('keydown', onKeyDown);
    return () => {
      document.removeEventListener('pointerdown', onPointerDown);
      document.removeEventListener('keydown', onKeyDown);
    };
  }, [menu]);
  useEffect(() => {
    if (!menu) setConfirming(false);
  }, [menu]);

  return (
    <li
      ref={root}
      className={`conversation${active ? ' is-active' : ''}`}
      data-testid="conversation-item"
      data-id={item.id}
    >
      {renaming ? (
        <RenameBox
          title={item.title ?? ''}
          onSave={(value) => {
            setRenaming(false);
            onRename(item.id, value);
          }}
          onCancel={() => setRenaming(false)}
        />
      ) : (
        <button
          type="button"
          className="conversation-open"
          onClick={() => onOpen(item.id)}
          aria-current={active ? 'page' : undefined}
          title={title}
          data-testid="conversation-title"
        >
          {title}
        </button>
      )}
      {!renaming && (
        <button
          type="button"
          className="conversation-more"
          onClick={() => setMenu((open) => !open)}
          aria-label={`More for “${title}”`}
          aria-expanded={menu}
          aria-haspopup="menu"
          data-testid="conversation-menu-button"
        >
          ⋯
        </button>
      )}
      {menu && (
        <div className="conversation-menu" role="menu" data-testid="conversation-menu">
          {confirming ? (
            <div className="confirm" role="alertdialog" aria-label="Delete this chat?">
              <p>Delete “{title}”? This cannot be undone.</p>
              <div className="confirm-actions">
                <button type="button" className="button ghost small" onClick={() => setMenu(false)}>
                  Cancel
                </button>
                <button
                  type="button"
                  className="button danger small"
                  onClick={() => {
                    setMenu(false);
                    onDelete(item.id);
                  }}
                  data-testid="delete-confirm"
                >
                  Delete
                </button>
              </div>
            </div>
          ) : (
            <>
              <button
                type="button"
                role="menuitem"
                onClick={() => {
                  setMenu(false);
                  setRenaming(true);
                }}
                data-testid="rename"
              >
                Rename
              </button>
              <a role="menuitem" href={exportUrl(item.id, 'md')} download onClick={closeSoon} data-testid="export-md">
                Export as Markdown
              </a>
              <a
                role="menuitem"
                href={exportUrl(item.id, 'json')}
                download
                onClick={closeSoon}
                data-testid="export-json"
              >
                Export as JSON
              </a>
              <button
                type="button"
                role="menuitem"
                className="danger"
                onClick={() => setConfirming(true)}
                data-testid="delete"
              >
                Delete
              </button>
            </>
          )}
        </div>
      )}
    </li>
  );
}

export default memo(ConversationItem);
