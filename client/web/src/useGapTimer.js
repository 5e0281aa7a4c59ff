// Calls `onDue` once the time `due` (ms since the epoch, from nextGapDue) has come; a
// new `due` replaces the wait, null cancels it. Shared by the chat page and /demo.
import { useEffect } from 'react';

export function useGapTimer(due, onDue) {
  useEffect(() => {
    if (due === null) return undefined;
    let timer = 0;
    function check() {
      // Timers may fire a little early: wait on rather than find nothing due.
      if (Date.now() < due) timer = setTimeout(check, due - Date.now());
      else onDue();
    }
    timer = setTimeout(check, Math.max(0, due - Date.now()));
    return () => clearTimeout(timer);
  }, [due, onDue]);
}
