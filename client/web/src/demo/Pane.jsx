import { memo, useLayoutEffect, useRef } from 'react';
import AnswerMeta from '../components/AnswerMeta.jsx';
import Markdown from '../components/Markdown.jsx';

function liveFigures(pane) {
  if (!pane.firstChunkAt) return null;
  const ttft = pane.firstChunkAt - pane.sentAt;
  const span = (pane.lastChunkAt - pane.firstChunkAt) / 1000;
  const rate = pane.chunks > 1 && span > 0 ? (pane.chunks - 1) / span : null;
  return (
    <div className="meta live" title="Measured in this page while the answer streams">
      <span>TTFT {Math.round(ttft)} ms</span>
      {rate !== null && <span>~{rate.toFixed(1)} chunks/s</span>}
      <span>{pane.chunks} chunks</span>
    </div>
  );
}

/** One pane: its own connection's state, the prompt it sent and the answer it received. */
function Pane({ pane }) {
  const { answer } = pane;
  const state = answer ? answer.status : 'idle';
  const body = useRef(null);

  // Follow the stream inside the pane.
  useLayoutEffect(() => {
    const el = body.current;
    if (el && state === 'streaming') el.scrollTop = el.scrollHeight;
  }, [answer, state]);

  return (
    <section className={`pane is-${state}`} data-testid="pane" data-state={state} aria-label={`Pane ${pane.key + 1}`}>
      <header className="pane-head">
        <strong>#{pane.key + 1}</strong>
        <span className={`connection ${pane.connection}`} data-state={pane.connection}>
          <span className="dot" aria-hidden="true" />
          {pane.connection}
        </span>
        <code className="sid" title="This pane's Socket.IO connection id">
          {pane.sid ?? '…'}
        </code>
        {pane.foreign.length > 0 && (
          <span className="badge bad" title={pane.foreign.join(', ')}>
            {pane.foreign.length} foreign ids
          </span>
        )}
      </header>
      {pane.notice && (
        <p className="connection-notice" role="alert">
          {pane.notice}
        </p>
      )}
      {pane.prompt && <p className="pane-prompt">{pane.prompt}</p>}
      <div className="pane-body" ref={body} data-testid="pane-answer">
        {answer ? (
          answer.content === '' && state === 'streaming' ? (
            <div className="typing" aria-label="Waiting for the first token">
              <span />
              <span />
              <span />
            </div>
          ) : (
            <Markdown text={answer.content} />
          )
        ) : (
          <p className="pane-empty">Idle: press “Send to all”.</p>
        )}
        {state === 'error' && (
          <div className="error" role="alert">
            <code className="error-code">{answer.error.code}</code> {answer.error.message}
          </div>
        )}
      </div>
      <footer className="pane-foot">
        {state === 'done' ? <AnswerMeta done={answer.done} /> : state === 'streaming' ? liveFigures(pane) : null}
      </footer>
    </section>
  );
}

export default memo(Pane);
