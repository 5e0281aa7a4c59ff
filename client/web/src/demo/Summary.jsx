import { answerFigures } from '../streamState.js';

/**
 * Live figures over every pane, and the isolation verdict: true when every pane has
 * sent something and received events only for ids it sent itself.
 */
export default function Summary({ panes }) {
  const sent = panes.reduce((n, p) => n + p.sent, 0);
  const foreign = panes.reduce((n, p) => n + p.foreign.length, 0);
  const received = panes.reduce((n, p) => n + p.received, 0);
  const streaming = panes.filter((p) => p.answer?.status === 'streaming').length;
  const done = panes.filter((p) => p.answer?.status === 'done').length;
  const failed = panes.filter((p) => p.answer?.status === 'error').length;
  const sids = panes.map((p) => p.sid).filter(Boolean);
  const distinct = new Set(sids).size;
  const figures = panes.map((p) => (p.answer?.status === 'done' ? answerFigures(p.answer.done) : null)).filter(Boolean);
  const ttfts = figures.map((f) => f.ttftMs).filter((v) => v !== null);
  const avgTtft = ttfts.length ? ttfts.reduce((a, b) => a + b, 0) / ttfts.length : null;
  const totalRate = figures.reduce((sum, f) => sum + (f.tokensPerSecond ?? 0), 0);

  let verdict = 'pending';
  if (foreign > 0) verdict = 'false';
  else if (sent > 0 && received > 0) verdict = 'true';

  return (
    <div className="summary" role="status">
      <span className={`badge ${verdict === 'true' ? 'good' : verdict === 'false' ? 'bad' : ''}`} data-testid="isolation-summary" data-isolated={verdict}>
        isolated: {verdict}
        {verdict !== 'pending' && ` (${received} events for ${sent} requests, ${foreign} foreign)`}
      </span>
      <span>
        {distinct}/{panes.length} connections
      </span>
      <span>
        {streaming} streaming · {done} done{failed ? ` · ${failed} failed` : ''}
      </span>
      {avgTtft !== null && <span>avg TTFT {Math.round(avgTtft)} ms</span>}
      {figures.length > 0 && <span>{totalRate.toFixed(1)} tok/s across panes</span>}
    </div>
  );
}
