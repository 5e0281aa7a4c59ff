import ConnectionState from './components/ConnectionState.jsx';
import Composer from './components/Composer.jsx';
import Transcript from './components/Transcript.jsx';
import { useChat } from './useChat.js';

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
  const { messages, streaming, connection, send, stop, regenerate, newChat } = useChat();
  const connected = connection === 'connected';
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
      <Transcript messages={messages} streaming={streaming} onRegenerate={regenerate} onRetry={regenerate}>
        <Welcome onPick={send} disabled={!connected} />
      </Transcript>
      <Composer onSend={send} onStop={stop} streaming={streaming} canSend={connected} />
    </div>
  );
}
