import { useCallback, useMemo } from 'react';
import ConnectionNotice from './components/ConnectionNotice.jsx';
import ConnectionState from './components/ConnectionState.jsx';
import Composer from './components/Composer.jsx';
import ModelChooser from './components/ModelChooser.jsx';
import RequestOptions from './components/RequestOptions.jsx';
import Transcript from './components/Transcript.jsx';
import { optionsFromQuery } from './requestOptions.js';
import { useChat } from './useChat.js';
import { useModels } from './useModels.js';

// Read once: a reload keeps the query, so the tab keeps its options.
const QUERY = optionsFromQuery(window.location.search);

const SUGGESTIONS = [
  'Explain how Socket.IO rooms work',
  'Write a table of three sorting algorithms',
  'Show a python code block that reverses a string',
];

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

export default function App() {
  const { messages, streaming, connection, notice, send, stop, regenerate, newChat } = useChat();
  const connected = connection === 'connected';
  const { models, model, choose } = useModels(connected);
  // Every question, and every regenerate or retry, goes to the model chosen at that
  // moment, with the query's options.
  const settings = useMemo(() => ({ model, options: QUERY.options }), [model]);
  const sendToModel = useCallback((text, images = []) => send(text, images, settings), [send, settings]);
  const regenerateWithModel = useCallback(() => regenerate(settings), [regenerate, settings]);
  return (
    <div className="app">
      <header className="topbar">
        <h1 className="brand">
          <span className="logo" aria-hidden="true">
            ✦
          </span>
          chatstream
        </h1>
        <ConnectionState state={connection} />
        <nav className="topbar-actions">
          <RequestOptions options={QUERY.options} problem={QUERY.problem} />
          <ModelChooser models={models} value={model} onChange={choose} />
          <a className="button ghost small" href="/demo">
            Demo
          </a>
          <button
            type="button"
            className="button small"
            onClick={newChat}
            disabled={messages.length === 0}
            data-testid="new-chat"
          >
            New chat
          </button>
        </nav>
      </header>
      <ConnectionNotice text={notice} />
      <Transcript
        messages={messages}
        streaming={streaming}
        onRegenerate={regenerateWithModel}
        onRetry={regenerateWithModel}
      >
        <Welcome onPick={sendToModel} disabled={!connected} />
      </Transcript>
      <Composer onSend={sendToModel} onStop={stop} streaming={streaming} canSend={connected} />
    </div>
  );
}
