import { memo, useCallback, useEffect, useLayoutEffect, useRef, useState } from 'react';

const MAX_HEIGHT_PX = 200;

/** The message box: Enter sends, Shift+Enter starts a new line; Stop replaces Send while streaming. */
function Composer({ onSend, onStop, streaming, canSend }) {
  const [text, setText] = useState('');
  const area = useRef(null);

  // Grow with the text up to a limit, then scroll inside.
  useLayoutEffect(() => {
    const el = area.current;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, MAX_HEIGHT_PX)}px`;
  }, [text]);

  // Stop turns back into Send when the answer ends: keep keyboard users in the composer.
  useEffect(() => {
    if (!streaming && (document.activeElement === document.body || document.activeElement === null)) {
      area.current.focus();
    }
  }, [streaming]);

  const submit = useCallback(() => {
    if (!canSend || streaming || !text.trim()) return;
    if (onSend(text)) setText('');
  }, [canSend, streaming, text, onSend]);

  const onKeyDown = useCallback(
    (event) => {
      // isComposing: Enter that confirms an IME candidate must not send.
      if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
        event.preventDefault();
        submit();
      }
    },
    [submit],
  );

  const onSubmit = useCallback(
    (event) => {
      event.preventDefault();
      submit();
    },
    [submit],
  );

  return (
    <form className="composer" onSubmit={onSubmit} data-testid="composer-form">
      <div className="composer-box">
        <label htmlFor="composer-input" className="visually-hidden">
          Message
        </label>
        <textarea
          id="composer-input"
          ref={area}
          rows={1}
          value={text}
          onChange={(event) => setText(event.target.value)}
          onKeyDown={onKeyDown}
          placeholder="Ask anything…"
          data-testid="composer"
          autoFocus
        />
        {streaming ? (
          <button type="button" className="send stop" onClick={onStop} data-testid="stop" aria-label="Stop generating">
            <span className="stop-square" aria-hidden="true" />
          </button>
        ) : (
          <button
            type="submit"
            className="send"
            disabled={!canSend || !text.trim()}
            data-testid="send"
            aria-label="Send message"
          >
            <span aria-hidden="true">↑</span>
          </button>
        )}
      </div>
      <p className="hint">
        <kbd>Enter</kbd> to send · <kbd>Shift</kbd>+<kbd>Enter</kbd> for a new line
      </p>
    </form>
  );
}

export default memo(Composer);
