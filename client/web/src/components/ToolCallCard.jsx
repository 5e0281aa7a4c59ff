import { memo, useMemo } from 'react';
import { formatArguments } from '../toolCalls.js';

const STATE_WORDS = { streaming: 'calling…', called: 'called', incomplete: 'cut short' };

/**
 * One tool call the model made: its function name and arguments (pretty-printed once the
 * call is whole), and its state: `streaming`, `called`, or `incomplete` (the answer ended
 * without the whole call). The page runs no tools.
 */
function ToolCallCard({ call, state }) {
  const { text, json } = useMemo(() => formatArguments(call.arguments, state === 'called'), [call.arguments, state]);
  return (
    <section className={`tool-call is-${state}`} data-testid="tool-call" data-state={state} aria-label="Tool call">
      <header className="tool-call-head">
        <span className="tool-call-icon" aria-hidden="true">
          ƒ
        </span>
        <code className="tool-call-name" data-testid="tool-call-name">
          {call.name ?? '…'}
        </code>
        <span className="tool-call-state" data-testid="tool-call-state">
          {STATE_WORDS[state]}
        </span>
      </header>
      {text !== '' && (
        <pre className="tool-call-arguments" data-testid="tool-call-arguments" data-json={json}>
          <code>{text}</code>
        </pre>
      )}
    </section>
  );
}

export default memo(ToolCallCard);
