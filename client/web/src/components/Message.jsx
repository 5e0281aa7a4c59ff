import { memo } from 'react';
import { toolCallState } from '../streamState.js';
import AnswerMeta from './AnswerMeta.jsx';
import Markdown from './Markdown.jsx';
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

/**
 * One turn. Memoized: a finished message keeps its identity in the transcript, so it is
 * not rendered (or its markdown parsed) again while a newer answer streams.
 */
function Message({ message, onRegenerate, onRetry }) {
  if (message.role === 'user') {
    return (
      <article className="message user" data-testid="message-user" aria-label="You">
        <div className="bubble">
          {message.images?.length > 0 && <UserImages images={message.images} />}
          {message.content}
        </div>
      </article>
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
        {status === 'done' && (
          <div className="answer-foot">
            <AnswerMeta done={message.done} />
            {onRegenerate && (
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
