// Collects socket events outside React state and hands them over at most once per
// animation frame, so a fast stream costs one render per frame, not one per chunk.
// A hidden tab gets no animation frames, so a timer flushes there instead.
const HIDDEN_FLUSH_MS = 250;

export function createFrameBuffer(onFlush) {
  let events = [];
  let frame = 0;
  let timer = 0;

  function flush() {
    cancelAnimationFrame(frame);
    clearTimeout(timer);
    frame = 0;
    timer = 0;
    if (events.length === 0) return;
    const batch = events;
    events = [];
    onFlush(batch);
  }

  function push(event) {
    events.push(event);
    if (frame || timer) return;
    frame = requestAnimationFrame(flush);
    timer = setTimeout(flush, HIDDEN_FLUSH_MS);
  }

  function dispose() {
    cancelAnimationFrame(frame);
    clearTimeout(timer);
    frame = 0;
    timer = 0;
    events = [];
  }

  return { push, flush, dispose };
}
