import { memo, useCallback, useId, useState } from 'react';
import { toolCallState } from '../streamState.js';
import AnswerMeta from './AnswerMeta.jsx';
import BranchNav from './BranchNav.jsx';
import Markdown from './Markdown.jsx';
import ModerationNotice from './ModerationNotice.jsx';
import ThinkingBlock from './ThinkingBlock.jsx';
import ToolCallCard from './ToolCallCard.jsx';

function ErrorNotice({ error, onRetry }) {
  return (
    <div className="error" role="alert" data-testid="error">
      <span>
        <code className="error-code">{error.code}</code> {error.message}
      </span>
      {onRetry && (
        <button type="button" className="button small" onClick={onRetry} data-testid="retry">
          Retry
        </button>
      )}
    </div>
  );
}

/**
 * A user turn's images: thumbnails of those held in memory; a tab reloaded since keeps
 * only their description (sessionStorage is too small for them).
 */
function UserImages({ images }) {
  return (
    <div className="user-images">
      {images.map((image) =>
        image.url ? (
          <img
            key={image.id}
            className="user-image"
            src={image.url}
            alt={image.name ?? 'image'}
            width={image.width}
            height={image.height}
            data-testid="user-image"
          />
        ) : (
          <span key={image.id} className="image-missing" title={image.name} data-testid="user-image-missing">
            image not kept
          </span>
        ),
      )}
    </div>
  );
}

/** What the model refused to do, in place of an answer. */
function Refusal({ text }) {
  return (
    <div className="refusal" role="note" data-testid="refusal">
      <span className="refusal-label">Refused</span> {text}
    </div>
  );
}

/** A question asked again: its text in a box, Save sends it as a new branch. */
function EditBox({ initial, onSave, onCancel }) {
  const [text, setText] = useState(initial);
  const inputId = useId();
  const submit = (event) => {
    event.preventDefault();
    if (text.trim() !== '') onSave(text);
  };
  const onKeyDown = (event) => {
    if (event.key === 'Escape') onCancel();
    else if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) submit(event);
  };
  return (
    <form className="edit-box" onSubmit={submit} data-testid="edit-form">
      <label className="visually-hidden" htmlFor={inputId}>
        Edit your message
      </label>
      <textarea
        id={inputId}
        value={text}
        rows={Math.min(8, text.split('\n').length + 1)}
        onChange={(event) => setText(event.target.value)}
        onKeyDown={onKeyDown}
        data-testid="edit-input"
        autoFocus
      />
      <div className="edit-actions">
        <button type="button" className="button ghost small" onClick={onCancel} data-testid="edit-cancel">
          Cancel
        </button>
        <button type="submit" className="button primary small" disabled={text.trim() === ''} data-testid="edit-save">
          Send
        </button>
      </div>
    </form>
  );
}

function UserMessage({ message, branchIndex, branchCount, onSwitchBranch, onEdit }) {
  const [editing, setEditing] = useState(false);
  const save = useCallback(
    (text) => {
      if (onEdit(message.id, text) !== false) setEditing(false);
    },
    [onEdit, message.id],
  );
  // The question's own element holds its text alone; its tools sit beside it.
  return (
    <div className="user-turn" data-testid="user-turn">
      {editing && onEdit ? (
        <EditBox initial={message.content} onSave={save} onCancel={() => setEditing(false)} />
      ) : (
        <article className="message user" data-testid="message-user" aria-label="You">
          <div className="bubble">
            {message.images?.length > 0 && <UserImages images={message.images} />}
            {message.content}
          </div>
        </article>
      )}
      {!editing && (branchCount > 1 || onEdit) && (
        <div className="message-tools">
          {branchCount > 1 && (
            <BranchNav id={message.id} index={branchIndex} count={branchCount} onSwitch={onSwitchBranch} />
          )}
          {onEdit && (
            <button
              type="button"
              className="button ghost small edit-button"
              onClick={() => setEditing(true)}
              aria-label="Edit message"
              title="Edit message"
              data-testid="edit"
            >
              Edit
            </button>
          )}
        </div>
      )}
    </div>
  );
}

/**
 * One turn. Memoized: a finished message keeps its identity in the transcript, so it is
 * not rendered (or its markdown parsed) again while a newer answer streams. A turn with
 * siblings (another answer to the same question, a question edited) shows ‹ 2/3 ›.
 */
function Message({ message, onRegenerate, onRetry, branchIndex = 1, branchCount = 1, onSwitchBranch, onEdit }) {
  if (message.role === 'user') {
    return (
      <UserMessage
        message={message}
        branchIndex={branchIndex}
        branchCount={branchCount}
        onSwitchBranch={onSwitchBranch}
        onEdit={onEdit}
      />
    );
  }
  const { status, reasoning = '', refusal = '', toolCalls = [] } = message;
  const answered = message.content !== '' || refusal !== '' || toolCalls.length > 0;
  const waiting = status === 'streaming' && !answered && reasoning === '';
  const callState = toolCalls.length > 0 ? toolCallState(message) : null;
  return (
    <article
      className={`message assistant is-${status}`}
      data-testid="message-assistant"
      data-state={status}
      data-finish={message.done?.finish_reason ?? ''}
      aria-label="Assistant"
      aria-busy={status === 'streaming'}
    >
      <div className="avatar" aria-hidden="true">
        ✦
      </div>
      <div className="body">
        {reasoning !== '' && (
          <ThinkingBlock
            reasoning={reasoning}
            thinkingSince={message.thinkingSince}
            thinkingMs={message.thinkingMs}
            answered={answered}
          />
        )}
        {waiting ? (
          <div className="typing" aria-label="Waiting for the answer">
            <span />
            <span />
            <span />
          </div>
        ) : (
          message.content !== '' && <Markdown text={message.content} testId="answer-text" />
        )}
        {refusal !== '' && <Refusal text={refusal} />}
        <ModerationNotice message={message} />
        {toolCalls.map((call) => (
          <ToolCallCard key={call.index} call={call} state={callState} />
        ))}
        {callState === 'called' && (
          <p className="tool-note" data-testid="tool-note">
            This page does not run tools: your next message tells the model they were not run.
          </p>
        )}
        {message.resuming && (
          <p className="resuming" role="status">
            Connection lost: the answer continues when it is back.
          </p>
        )}
        {status === 'error' && <ErrorNotice error={message.error} onRetry={onRetry} />}
        {(status === 'done' || branchCount > 1) && (
          <div className="answer-foot">
            {branchCount > 1 && (
              <BranchNav id={message.id} index={branchIndex} count={branchCount} onSwitch={onSwitchBranch} />
            )}
            {status === 'done' && <AnswerMeta done={message.done} />}
            {status === 'done' && onRegenerate && (
              <button type="button" className="button ghost small" onClick={onRegenerate} data-testid="regenerate">
                ↻ Regenerate
              </button>
            )}
          </div>
        )}
      </div>
    </article>
  );
}

export default memo(Message);
