import { memo, useCallback, useEffect, useLayoutEffect, useRef, useState } from 'react';
import { ImageProblem, imageFilesOf, MAX_IMAGES, prepareImage, screenFiles } from '../images.js';

const MAX_HEIGHT_PX = 200;

/** The images attached to the next message, each removable, and those still being prepared. */
function Attachments({ images, preparing, onRemove }) {
  return (
    <ul className="attachments" data-testid="attachments">
      {images.map((image) => (
        <li key={image.id} className="attachment">
          <img src={image.url} alt={image.name} data-testid="attachment-image" />
          <button
            type="button"
            className="attachment-remove"
            onClick={() => onRemove(image.id)}
            aria-label={`Remove ${image.name}`}
            data-testid="attachment-remove"
          >
            ×
          </button>
        </li>
      ))}
      {Array.from({ length: preparing }, (_, index) => (
        <li key={`preparing-${index}`} className="attachment is-preparing" aria-label="Preparing an image" />
      ))}
    </ul>
  );
}

/**
 * The message box: Enter sends, Shift+Enter starts a new line; Stop replaces Send while
 * streaming. Images come from the attach button, a paste or a drop (see images.js).
 */
function Composer({ onSend, onStop, streaming, canSend }) {
  const [text, setText] = useState('');
  const [images, setImages] = useState([]);
  const [preparing, setPreparing] = useState(0);
  const [problems, setProblems] = useState([]);
  const [dragging, setDragging] = useState(false);
  // Images attached or being prepared, read synchronously by the next paste or drop.
  const held = useRef(0);
  const area = useRef(null);
  const picker = useRef(null);

  const addFiles = useCallback((files) => {
    const { accepted, problems: refused } = screenFiles(files, held.current);
    setProblems(refused);
    if (accepted.length === 0) return;
    held.current += accepted.length;
    setPreparing((count) => count + accepted.length);
    // Attached in the order chosen, once all are ready.
    Promise.allSettled(accepted.map(prepareImage)).then((results) => {
      const ready = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      const failed = results.flatMap((r, index) => {
        if (r.status === 'fulfilled') return [];
        if (r.reason instanceof ImageProblem) return r.reason.message;
        return `${accepted[index].name} could not be read as an image.`;
      });
      held.current -= failed.length;
      setPreparing((count) => count - accepted.length);
      setImages((list) => [...list, ...ready]);
      if (failed.length > 0) setProblems((list) => [...list, ...failed]);
    });
  }, []);

  const remove = useCallback((id) => {
    held.current -= 1;
    setImages((list) => list.filter((image) => image.id !== id));
  }, []);

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

  const ready = canSend && !streaming && preparing === 0 && (text.trim() !== '' || images.length > 0);
  const submit = useCallback(() => {
    if (!ready) return;
    if (onSend(text, images)) {
      setText('');
      setImages([]);
      setProblems([]);
      held.current = 0;
    }
  }, [ready, text, images, onSend]);

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

  // A pasted image is attached; text pasted with it still goes in the box.
  const onPaste = useCallback(
    (event) => {
      const files = imageFilesOf(event.clipboardData);
      if (files.length === 0) return;
      if (!event.clipboardData.getData('text/plain')) event.preventDefault();
      addFiles(files);
    },
    [addFiles],
  );

  const onDragOver = useCallback((event) => {
    if (!Array.from(event.dataTransfer?.types ?? []).includes('Files')) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
    setDragging(true);
  }, []);
  const onDragLeave = useCallback((event) => {
    if (!event.currentTarget.contains(event.relatedTarget)) setDragging(false);
  }, []);
  const onDrop = useCallback(
    (event) => {
      if (!Array.from(event.dataTransfer?.types ?? []).includes('Files')) return;
      event.preventDefault();
      setDragging(false);
      addFiles(Array.from(event.dataTransfer.files));
    },
    [addFiles],
  );

  const onPick = useCallback(
    (event) => {
      addFiles(Array.from(event.target.files ?? []));
      // The same file chosen again must fire `change` again.
      event.target.value = '';
    },
    [addFiles],
  );

  const full = images.length + preparing >= MAX_IMAGES;
  return (
    <form
      className={`composer${dragging ? ' is-dragging' : ''}`}
      onSubmit={onSubmit}
      onDragOver={onDragOver}
      onDragLeave={onDragLeave}
      onDrop={onDrop}
      data-testid="composer-form"
    >
      {problems.length > 0 && (
        <p className="attach-problem" role="alert" data-testid="attach-problem">
          {problems.join(' ')}
        </p>
      )}
      <div className="composer-box">
        {(images.length > 0 || preparing > 0) && (
          <Attachments images={images} preparing={preparing} onRemove={remove} />
        )}
        <input
          ref={picker}
          type="file"
          accept="image/*"
          multiple
          hidden
          onChange={onPick}
          data-testid="attach-input"
        />
        <button
          type="button"
          className="attach"
          onClick={() => picker.current.click()}
          disabled={full}
          title={full ? `At most ${MAX_IMAGES} images per message` : 'Attach images'}
          aria-label="Attach images"
          data-testid="attach"
        >
          <span aria-hidden="true">+</span>
        </button>
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
          onPaste={onPaste}
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
            disabled={!ready}
            data-testid="send"
            aria-label="Send message"
          >
            <span aria-hidden="true">↑</span>
          </button>
        )}
      </div>
      <p className="hint">
        <kbd>Enter</kbd> to send · <kbd>Shift</kbd>+<kbd>Enter</kbd> for a new line · paste or drop images
      </p>
    </form>
  );
}

export default memo(Composer);
