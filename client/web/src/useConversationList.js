// The sidebar's state: the owner's conversations (GET /api/conversations), a search
// (`?q=`, asked once typing pauses), further pages, and rename and delete. The chat
// hook hands it the socket's `conversation` and `conversation_deleted` events.
import { useCallback, useEffect, useRef, useState } from 'react';
import { appendPage, removeItem, renameItem, touchItem, upsertItem } from './conversationList.js';
import { deleteConversation, listConversations, renameConversation } from './conversationsApi.js';

const PAGE = 50;
const SEARCH_PAUSE_MS = 300;

export function useConversationList() {
  const [items, setItems] = useState([]);
  const [query, setQuery] = useState('');
  // 'loading' | 'ready' | 'failed'
  const [status, setStatus] = useState('loading');
  const [error, setError] = useState(null);
  // Why the last rename or delete failed.
  const [actionError, setActionError] = useState(null);
  const [nextCursor, setNextCursor] = useState(null);
  const [generation, setGeneration] = useState(0);
  // Read by the socket's events: a search's results take only what the server matched.
  const searching = useRef(false);
  useEffect(() => {
    searching.current = query.trim() !== '';
  }, [query]);

  useEffect(() => {
    const request = new AbortController();
    const q = query.trim();
    setStatus('loading');
    const timer = setTimeout(
      () => {
        listConversations({ q, limit: PAGE, signal: request.signal })
          .then((page) => {
            setItems(Array.isArray(page?.data) ? page.data : []);
            setNextCursor(page?.next_cursor ?? null);
            setStatus('ready');
            setError(null);
          })
          .catch((failure) => {
            if (request.signal.aborted) return;
            setStatus('failed');
            setError({ code: failure.code ?? 'internal', message: failure.message });
          });
      },
      q ? SEARCH_PAUSE_MS : 0,
    );
    return () => {
      clearTimeout(timer);
      request.abort();
    };
  }, [query, generation]);

  const refresh = useCallback(() => setGeneration((n) => n + 1), []);

  const loadMore = useCallback(() => {
    if (!nextCursor) return;
    listConversations({ q: query.trim(), before: nextCursor, limit: PAGE })
      .then((page) => {
        setItems((list) => appendPage(list, Array.isArray(page?.data) ? page.data : []));
        setNextCursor(page?.next_cursor ?? null);
      })
      .catch((failure) => setActionError({ code: failure.code, message: failure.message }));
  }, [nextCursor, query]);

  // Socket events, and what this tab's own chats did.
  const upsert = useCallback((payload) => setItems((list) => upsertItem(list, payload, !searching.current)), []);
  const forget = useCallback((id) => setItems((list) => removeItem(list, id)), []);
  const touch = useCallback((id) => setItems((list) => touchItem(list, id, new Date().toISOString())), []);

  const rename = useCallback(
    (id, title) => {
      setActionError(null);
      setItems((list) => renameItem(list, id, title));
      return renameConversation(id, title)
        .then((conversation) => upsert(conversation))
        .catch((failure) => {
          setActionError({ code: failure.code, message: failure.message });
          refresh();
        });
    },
    [upsert, refresh],
  );

  const remove = useCallback(
    (id) => {
      setActionError(null);
      return deleteConversation(id).then(
        () => {
          forget(id);
          return true;
        },
        (failure) => {
          // Gone already (another tab deleted it): what the reader wanted.
          if (failure.code === 'not_found') {
            forget(id);
            return true;
          }
          setActionError({ code: failure.code, message: failure.message });
          return false;
        },
      );
    },
    [forget],
  );

  return {
    items,
    query,
    setQuery,
    status,
    error,
    actionError,
    nextCursor,
    loadMore,
    refresh,
    upsert,
    forget,
    touch,
    rename,
    remove,
  };
}
