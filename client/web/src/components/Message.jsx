import { memo } from 'react';
import AnswerMeta from './AnswerMeta.jsx';
import Markdown from './Markdown.jsx';
import ThinkingBlock from './ThinkingBlock.jsx';

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
 * One turn. Memoized: a finished message keeps its identity in the transcript, so it is
 * not rendered (or its markdown parsed) again while a newer answer streams.
 */
function Message({ message, onRegenerate, onRetry }) {
  if (message.role === 'user') {
    return (
      <article className="message user" data-testid="message-user" aria-label="You">
        <div className="bubble">{message.content}</div>
      </article>
    );
  }
  const { status, reasoning = '' } = message;
  const waiting = status === 'streaming' && message.content === '' && reasoning === '';
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
            answered={message.content !== ''}
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
