import { expect, test } from 'vitest';
import { refusalOf } from './refusal.js';

// What socket.io-client hands connect_error: a refused Socket.IO connect is an Error with
// the server's data; a refused handshake on polling is a TransportError whose context is
// the XMLHttpRequest, its description the HTTP status.
function refusedConnect(message, data) {
  return Object.assign(new Error(message), { data });
}
function refusedHandshake(status, body) {
  return Object.assign(new Error('xhr poll error'), {
    type: 'TransportError',
    description: status,
    context: { status, responseText: JSON.stringify(body) },
  });
}

test('a full server: retryable, and the page says it retries', () => {
  const error = refusedHandshake(503, { code: 'server_full', message: 'the server holds…', retryable: true });
  expect(refusalOf(error)).toEqual({
    code: 'server_full',
    message: 'the server holds…',
    retryable: true,
    text: 'The server is full. Retrying…',
  });
});

test('too many connection attempts from one address: retryable', () => {
  const error = refusedHandshake(429, { code: 'handshake_rate_limited', message: 'more than 120', retryable: true });
  expect(refusalOf(error)).toMatchObject({ retryable: true, text: expect.stringContaining('Too many connection attempts') });
});

test('too many connections, at the handshake or at the Socket.IO connect: not retryable', () => {
  const atHandshake = refusedHandshake(429, { code: 'too_many_connections', message: 'holds 100', retryable: false });
  const atConnect = refusedConnect('this address already holds 50 connections; close one first', {
    code: 'too_many_connections',
    retryable: false,
  });
  for (const error of [atHandshake, atConnect]) {
    expect(refusalOf(error)).toMatchObject({
      code: 'too_many_connections',
      retryable: false,
      text: 'Too many connections from your address. Close other tabs of this page, then reload.',
    });
  }
  expect(refusalOf(atConnect).message).toBe('this address already holds 50 connections; close one first');
});

test('an unknown code is shown with the server’s message', () => {
  const error = refusedConnect('go away', { code: 'something_new' });
  expect(refusalOf(error)).toEqual({
    code: 'something_new',
    message: 'go away',
    retryable: false,
    text: 'The server refused the connection: go away',
  });
});

test('a server that is down, or a body that is not a refusal, is no refusal', () => {
  expect(refusalOf(new Error('xhr poll error'))).toBeNull();
  expect(refusalOf(Object.assign(new Error('xhr poll error'), { context: { responseText: '<html>502' } }))).toBeNull();
  expect(refusalOf(Object.assign(new Error('timeout'), { data: undefined }))).toBeNull();
  expect(refusalOf(undefined)).toBeNull();
});
