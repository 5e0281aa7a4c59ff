import { moderationNotice } from '../moderation.js';

/** In place of what the content filter took or stopped: a line that says so. */
export default function ModerationNotice({ message }) {
  const text = moderationNotice(message);
  if (text === null) return null;
  return (
    <p className="moderation-notice" role="note" data-testid="moderation-notice">
      {text}
    </p>
  );
}
