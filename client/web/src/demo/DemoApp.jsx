import Pane from './Pane.jsx';
import Summary from './Summary.jsx';
import { MAX_PANES, MIN_PANES, usePanes } from './usePanes.js';

function initialCount() {
  const asked = Number(new URLSearchParams(window.location.search).get('panes'));
  return Number.isInteger(asked) && asked >= MIN_PANES && asked <= MAX_PANES ? asked : 4;
}

export default function DemoApp() {
  const { panes, count, setCount, sendAll, stopAll } = usePanes(initialCount());
  const anyStreaming = panes.some((p) => p.answer?.status === 'streaming');
  const allConnected = panes.every((p) => p.connection === 'connected');
  return (
    <div className="demo">
      <header className="topbar">
        <h1 className="brand">
          <span className="logo" aria-hidden="true">
            ✦
          </span>
          chatstream <span className="brand-sub">demo</span>
        </h1>
        <nav className="topbar-actions">
          <a className="button ghost small" href="/">
            Chat
          </a>
        </nav>
      </header>
      <div className="demo-controls">
        <p className="demo-intro">Each pane is its own Socket.IO connection, as if it were a separate tab.</p>
        <div className="controls-row">
          <div className="count" role="group" aria-labelledby="count-label">
            <span id="count-label">Panes</span>
            <button type="button" className="button small" onClick={() => setCount(count - 1)} disabled={count <= MIN_PANES} aria-label="Fewer panes">
              −
            </button>
            <input
              type="number"
              min={MIN_PANES}
              max={MAX_PANES}
              value={count}
              onChange={(event) => setCount(event.target.value)}
              aria-labelledby="count-label"
              data-testid="pane-count"
            />
            <button type="button" className="button small" onClick={() => setCount(count + 1)} disabled={count >= MAX_PANES} aria-label="More panes">
              +
            </button>
          </div>
          <button type="button" className="button primary" onClick={sendAll} disabled={anyStreaming || !allConnected} data-testid="send-all">
            Send to all
          </button>
          <button type="button" className="button" onClick={stopAll} disabled={!anyStreaming} data-testid="stop-all">
            Stop all
          </button>
        </div>
        <Summary panes={panes} />
      </div>
      <main className="panes">
        {panes.map((pane) => (
          <Pane key={pane.key} pane={pane} />
        ))}
      </main>
    </div>
  );
}
