import { answerFigures } from '../streamState.js';

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * The figures of one finished answer: time to first token (and to the first answer text,
 * when reasoning came first), speed, size and reasoning tokens, model, how it ended.
 */
export default function AnswerMeta({ done }) {
  const f = answerFigures(done);
  if (!f) return null;
  const parts = [];
  if (f.ttftMs !== null) parts.push(<span key="ttft" title="Time to first token">TTFT {seconds(f.ttftMs)}</span>);
  // Told apart only when they differ: without reasoning the first text is the answer's.
  if (f.answerTtftMs !== null && f.answerTtftMs !== f.ttftMs) {
    parts.push(
      <span key="answer-ttft" title="Time to the first answer text, after the reasoning" data-testid="meta-answer-ttft">
        answer after {seconds(f.answerTtftMs)}
      </span>,
    );
  }
  if (f.tokensPerSecond !== null) {
    parts.push(<span key="tps" title="Tokens per second after the first token">{f.tokensPerSecond.toFixed(1)} tok/s</span>);
  }
  if (f.tokens !== null) {
    parts.push(
      <span key="tokens" title={f.estimated ? 'Counted by the server' : 'Reported by the model'}>
        {f.estimated ? '≈' : ''}
        {f.tokens} tokens
      </span>,
    );
  }
  if (f.reasoningTokens) {
    parts.push(
      <span key="reasoning" title="Tokens of reasoning, counted in the tokens" data-testid="meta-reasoning-tokens">
        {f.estimated ? '≈' : ''}
        {f.reasoningTokens} reasoning
      </span>,
    );
  }
  if (f.model) parts.push(<span key="model" className="meta-model">{f.model}</span>);
  if (f.finish) parts.push(<span key="finish" className={`meta-finish finish-${done.finish_reason}`}>{f.finish}</span>);
  return (
    <div className="meta" data-testid="meta">
      {parts}
    </div>
  );
}
