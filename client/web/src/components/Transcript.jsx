import { useCallback, useLayoutEffect, useRef, useState } from 'react';
import Message from './Message.jsx';

// Within this many pixels of the bottom counts as "at the bottom": follow the stream.
const STICK_PX = 48;

/**
 * The branch in view of the conversation, scrolled to follow a streaming answer until the reader scrolls up;
 * scrolling back to the bottom (or the jump button) resumes following.
 */
export default function Transcript({
  messages,
  positions,
  streaming,
  onRegenerate,
  onRetry,
  onSwitchBranch,
  onEdit,
  children,
}) {
  const scroller = useRef(null);
  const follow = useRef(true);
  const [showJump, setShowJump] = useState(false);
  const count = messages.length;

  const onScroll = useCallback(() => {
    const el = scroller.current;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICK_PX;
    follow.current = atBottom;
    setShowJump(!atBottom);
  }, []);

  const jump = useCallback(() => {
    const el = scroller.current;
    follow.current = true;
    el.scrollTop = el.scrollHeight;
  }, []);

  // Follow the stream while following; a new turn (the reader just sent something)
  // always brings the view down.
  const seenCount = useRef(count);
  useLayoutEffect(() => {
    if (count > seenCount.current) follow.current = true;
    seenCount.current = count;
    const el = scroller.current;
    if (follow.current && el) el.scrollTop = el.scrollHeight;
  }, [messages, count]);

  const last = messages[count - 1];
  return (
    <main className="transcript" ref={scroller} onScroll={onScroll} aria-live="polite" aria-busy={streaming}>
      <div className="column">
        {count === 0 && children}
        {messages.map((message) => {
          const isLast = message === last && message.role === 'assistant';
          const position = positions?.get(message.id);
          return (
            <Message
              key={message.id}
              message={message}
              onRegenerate={isLast && !streaming ? onRegenerate : undefined}
              onRetry={isLast && message.status === 'error' ? onRetry : undefined}
              branchIndex={position?.index}
              branchCount={position?.count}
              onSwitchBranch={onSwitchBranch}
              onEdit={message.role === 'user' && !streaming ? onEdit : undefined}
            />
          );
        })}
      </div>
      {showJump && (
        <button type="button" className="jump" onClick={jump} aria-label="Jump to the latest message">
          ↓
        </button>
      )}
    </main>
  );
}
