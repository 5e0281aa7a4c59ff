import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { createFrameBuffer } from './frameBuffer.js';

describe('createFrameBuffer', () => {
  let frames;

  beforeEach(() => {
    vi.useFakeTimers();
    frames = [];
    vi.stubGlobal('requestAnimationFrame', (callback) => frames.push(callback));
    vi.stubGlobal('cancelAnimationFrame', () => {});
  });

  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  function nextFrame() {
    const due = frames.splice(0);
    for (const callback of due) callback();
  }

  test('events pushed within a frame are handed over together, once', () => {
    const onFlush = vi.fn();
    const buffer = createFrameBuffer(onFlush);
    buffer.push(1);
    buffer.push(2);
    buffer.push(3);
    expect(onFlush).not.toHaveBeenCalled();
    nextFrame();
    expect(onFlush).toHaveBeenCalledTimes(1);
    expect(onFlush).toHaveBeenCalledWith([1, 2, 3]);
    vi.runAllTimers();
    expect(onFlush).toHaveBeenCalledTimes(1);
  });

  test('a hidden tab, which gets no frames, is flushed by the timer', () => {
    const onFlush = vi.fn();
    const buffer = createFrameBuffer(onFlush);
    buffer.push('a');
    vi.advanceTimersByTime(300);
    expect(onFlush).toHaveBeenCalledWith(['a']);
  });

  test('flush hands over at once; dispose drops what is left', () => {
    const onFlush = vi.fn();
    const buffer = createFrameBuffer(onFlush);
    buffer.push('now');
    buffer.flush();
    expect(onFlush).toHaveBeenCalledWith(['now']);
    buffer.push('never');
    buffer.dispose();
    nextFrame();
    vi.runAllTimers();
    expect(onFlush).toHaveBeenCalledTimes(1);
  });
});
