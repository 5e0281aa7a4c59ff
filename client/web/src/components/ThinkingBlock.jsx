import { memo, useEffect, useId, useState } from 'react';
import Markdown from './Markdown.jsx';

function wholeSeconds(ms) {
  return Math.max(1, Math.round(ms / 1000));
}

/** Seconds since `since` (ms), counting up once a second: only this text renders again. */
function Elapsed({ since }) {
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    // Tick on the whole second since `since`, so the count never skips or stalls.
    const timer = setTimeout(() => setNow(Date.now()), 1000 - ((Date.now() - since) % 1000));
    return () => clearTimeout(timer);
  }, [since, now]);
  return <>{Math.max(0, Math.floor((now - since) / 1000))} s</>;
}

/**
 * The reasoning ("thinking") text above an answer. Open while the model reasons, with
 * the time so far; it closes by itself when the answer starts ("Thought for 12 s"), and
 * stays open when no answer came. A click opens or closes it; a click made while the
 * model was reasoning is forgotten when the answer starts, so it closes then anyway.
 */
function ThinkingBlock({ reasoning, thinkingSince, thinkingMs, answered }) {
  const bodyId = useId();
  const thinking = thinkingMs === undefined;
  const shouldOpen = !answered;
  const [choice, setChoice] = useState(null); // {when: shouldOpen, open}: the reader's click
  const open = choice !== null && choice.when === shouldOpen ? choice.open : shouldOpen;
  const state = thinking ? 'thinking' : 'done';

  return (
    <section className={`thinking is-${state}`} data-testid="thinking" data-state={state} data-open={open}>
      <button
        type="button"
        className="thinking-toggle"
        aria-expanded={open}
        aria-controls={bodyId}
        onClick={() => setChoice({ when: shouldOpen, open: !open })}
        data-testid="thinking-toggle"
      >
        <span className="thinking-chevron" aria-hidden="true" />
        <span className="thinking-label" data-testid="thinking-label">
          {thinking ? (
            <>
              Thinking… {/* A live region would read every tick aloud. */}
              <span className="thinking-time" aria-live="off">
                <Elapsed since={thinkingSince ?? Date.now()} />
              </span>
            </>
          ) : (
            `Thought for ${wholeSeconds(thinkingMs)} s`
          )}
        </span>
      </button>
      <div id={bodyId} className="thinking-body" hidden={!open}>
        <Markdown text={reasoning} className="markdown-reasoning" testId="thinking-text" />
      </div>
    </section>
  );
}

export default memo(ThinkingBlock);
