import { useCallback, useEffect, useMemo, useState } from 'react';
import ConnectionNotice from './components/ConnectionNotice.jsx';
import ConnectionState from './components/ConnectionState.jsx';
import Composer from './components/Composer.jsx';
import ConversationNotice from './components/ConversationNotice.jsx';
import ModelChooser from './components/ModelChooser.jsx';
import RequestOptions from './components/RequestOptions.jsx';
import Sidebar from './components/Sidebar.jsx';
import Transcript from './components/Transcript.jsx';
import { optionsFromQuery } from './requestOptions.js';
import { useChat } from './useChat.js';
import { useConversationList } from './useConversationList.js';
import { useModels } from './useModels.js';

// Read once: a reload keeps the query, so the tab keeps its options.
const QUERY = optionsFromQuery(window.location.search);
// Below this width the sidebar lies over the page, closed until asked for.
const NARROW = '(max-width: 768px)';

const SUGGESTIONS = [
  'Explain how Socket.IO rooms work',
  'Write a table of three sorting algorithms',
  'Show a python code block that reverses a string',
];

function isNarrow() {
  return window.matchMedia(NARROW).matches;
}

function Welcome({ onPick, disabled }) {
  return (
    <section className="welcome" aria-labelledby="welcome-title">
      <h2 id="welcome-title">How can I help?</h2>
      <p>Answers stream in as the model writes them.</p>
      <div className="suggestions">
        {SUGGESTIONS.map((text) => (
          <button key={text} type="button" className="suggestion" onClick={() => onPick(text)} disabled={disabled}>
            {text}
          </button>
        ))}
      </div>
    </section>
  );
}

function Loading() {
  return (
    <p className="conversation-loading" role="status" data-testid="conversation-loading">
      Loading the chat…
    </p>
  );
}

export default function App() {
  const list = useConversationList();
  const chat = useChat({
    onConversation: list.upsert,
    onConversationDeleted: list.forget,
    onStored: list.touch,
    onReconnected: list.refresh,
  });
  const connected = chat.connection === 'connected';
  const { models, model, choose } = useModels(connected);
  const [sidebarOpen, setSidebarOpen] = useState(() => !isNarrow());

  // Crossing the breakpoint: open beside the page on a wide screen, closed on a narrow one.
  useEffect(() => {
    const query = window.matchMedia(NARROW);
    const onChange = () => setSidebarOpen(!query.matches);
    query.addEventListener('change', onChange);
    return () => query.removeEventListener('change', onChange);
  }, []);
  useEffect(() => {
    if (!sidebarOpen) return undefined;
    function onKeyDown(event) {
      if (event.key === 'Escape' && isNarrow()) setSidebarOpen(false);
    }
    document.addEventListener('keydown', onKeyDown);
    return () => document.removeEventListener('keydown', onKeyDown);
  }, [sidebarOpen]);

  useEffect(() => {
    document.title = chat.title ? `${chat.title} · chatstream` : 'chatstream';
  }, [chat.title]);

  // Every question, and every regenerate, edit or retry, goes to the model chosen at
  // that moment, with the query's options.
  const settings = useMemo(() => ({ model, options: QUERY.options }), [model]);
  const { send, regenerate, edit, open, newChat, forget } = chat;
  const sendToModel = useCallback((text, images = []) => send(text, images, settings), [send, settings]);
  const regenerateWithModel = useCallback(() => regenerate(settings), [regenerate, settings]);
  const editWithModel = useCallback((id, text) => edit(id, text, settings), [edit, settings]);
  const closeSidebar = useCallback(() => setSidebarOpen(false), []);
  const closeIfNarrow = useCallback(() => {
    if (isNarrow()) setSidebarOpen(false);
  }, []);
  const openConversation = useCallback(
    (id) => {
      open(id);
      closeIfNarrow();
    },
    [open, closeIfNarrow],
  );
  const startNewChat = useCallback(() => {
    newChat();
    closeIfNarrow();
  }, [newChat, closeIfNarrow]);
  const { remove, rename } = list;
  const deleteConversation = useCallback(
    (id) => {
      // Out of view at once; the list keeps it if the server refuses.
      forget(id);
      remove(id);
    },
    [forget, remove],
  );

  const empty = chat.messages.length === 0;
  const canAsk = connected && chat.canAdd;
  return (
    <div className={`layout${sidebarOpen ? ' sidebar-open' : ''}`}>
      <Sidebar
        open={sidebarOpen}
        items={list.items}
        query={list.query}
        onQuery={list.setQuery}
        status={list.status}
        error={list.error}
        actionError={list.actionError}
        activeId={chat.conversationId}
        hasMore={Boolean(list.nextCursor)}
        onLoadMore={list.loadMore}
        onRetry={list.refresh}
        onOpen={openConversation}
        onNewChat={startNewChat}
        canNewChat={!empty || chat.conversationId !== null}
        onRename={rename}
        onDelete={deleteConversation}
        onClose={closeSidebar}
      />
      {sidebarOpen && <div className="sidebar-backdrop" onClick={closeSidebar} aria-hidden="true" />}
      <div className="app">
        <header className="topbar">
          <button
            type="button"
            className="sidebar-toggle"
            onClick={() => setSidebarOpen((now) => !now)}
            aria-expanded={sidebarOpen}
            aria-controls="sidebar"
            aria-label={sidebarOpen ? 'Hide the list of chats' : 'Show the list of chats'}
            data-testid="sidebar-toggle"
          >
            <span aria-hidden="true">☰</span>
          </button>
          <h1 className="brand">
            <span className="logo" aria-hidden="true">
              ✦
            </span>
            chatstream
          </h1>
          <ConnectionState state={chat.connection} />
          <nav className="topbar-actions">
            <RequestOptions options={QUERY.options} problem={QUERY.problem} />
            <ModelChooser models={models} value={model} onChange={choose} />
            <a className="button ghost small" href="/demo">
              Demo
            </a>
            <button
              type="button"
              className="button small new-chat-compact"
              onClick={startNewChat}
              aria-label="New chat"
              data-testid="new-chat-compact"
            >
              +
            </button>
          </nav>
        </header>
        <ConnectionNotice text={chat.notice} />
        <ConversationNotice
          error={chat.loadError}
          notice={chat.viewNotice}
          onRetry={chat.reload}
          onNewChat={startNewChat}
        />
        <Transcript
          key={chat.viewKey}
          messages={chat.messages}
          positions={chat.positions}
          streaming={chat.streaming}
          onRegenerate={regenerateWithModel}
          onRetry={regenerateWithModel}
          onSwitchBranch={chat.switchBranch}
          onEdit={canAsk ? editWithModel : undefined}
        >
          {chat.status === 'loading' ? (
            <Loading />
          ) : (
            chat.status !== 'missing' && <Welcome onPick={sendToModel} disabled={!canAsk} />
          )}
        </Transcript>
        <Composer onSend={sendToModel} onStop={chat.stop} streaming={chat.streaming} canSend={canAsk} />
      </div>
    </div>
  );
}
