import { expect, test } from 'vitest';
import { resumeGaps } from './socket.js';

// Stands in for a socket.io-client Socket: answers each `resume` with the ack given for
// its id (undefined: no ack before the timeout) and records what was sent.
function fakeSocket(acks) {
  const sent = [];
  return {
    sent,
    timeout(ms) {
      return {
        emitWithAck(event, payload) {
          sent.push({ ms, event, payload });
          const ack = acks[payload.id];
          return ack === undefined ? Promise.reject(new Error('operation has timed out')) : Promise.resolve(ack);
        },
      };
    },
  };
}

test('resumeGaps sends each resume and reports only negative acks', async () => {
  const denied = { code: 'resume_denied', message: 'no resumable request' };
  const target = fakeSocket({ ok: { ok: true, id: 'ok', replayed: 3 }, no: { ok: false, error: denied } });
  const negative = [];
  const resumes = [
    { id: 'ok', token: 't1', after: 4 },
    { id: 'no', token: 't2', after: -1 },
    { id: 'silent', token: 't3', after: 0 },
  ];
  resumeGaps(target, resumes, (id, error) => negative.push({ id, error }), 500);
  await new Promise((resolve) => setTimeout(resolve, 0));
  expect(target.sent).toEqual(resumes.map((payload) => ({ ms: 500, event: 'resume', payload })));
  // A missing ack is left to the next try, not taken as a refusal.
  expect(negative).toEqual([{ id: 'no', error: denied }]);
});
