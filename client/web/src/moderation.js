// What the server's moderation did to an answer, in words for the reader: text it took
// back while streaming (`retract`), an answer it stopped (finish_reason "content_filter"),
// or a message it refused before asking the model (error `content_filtered`).

export const RETRACTED = 'Part of this answer was withdrawn: it did not pass the content filter.';
export const FILTERED = 'This answer was stopped by the content filter.';
export const REFUSED = 'Your message was not sent to the model: it did not pass the content filter.';

/** The notice an assistant message gets for moderation, or null when none applies. */
export function moderationNotice(message) {
  if (message?.role !== 'assistant') return null;
  if (message.retracted) return RETRACTED;
  if (message.status === 'done' && message.done?.finish_reason === 'content_filter') return FILTERED;
  if (message.status === 'error' && message.error?.code === 'content_filtered') return REFUSED;
  return null;
}
