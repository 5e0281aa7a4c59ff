// Why the server refused a connection, read from socket.io-client's connect_error, and
// what the page says about it. Pure functions: the hooks decide what to do with it.

// What the page says for each code the server refuses a connection with.
const TEXTS = {
  server_full: 'The server is full. Retrying…',
  handshake_rate_limited: 'Too many connection attempts from your address. Retrying…',
  too_many_connections: 'Too many connections from your address. Close other tabs of this page, then reload.',
  unauthorized: 'The server refused the connection: it requires a valid token.',
};

function parsed(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * The refusal in a connect_error, as `{code, message, retryable, text}`; null when the
 * server did not say no (it is down, or the network is), which is a plain reconnect.
 * A refused Socket.IO connect carries the code in `error.data`; a refused handshake is an
 * HTTP error (503, 429) whose JSON body has it, on the polling request in `error.context`.
 * @param {any} error
 */
export function refusalOf(error) {
  if (!error) return null;
  let details = null;
  if (error.data && typeof error.data.code === 'string') {
    details = { ...error.data, message: error.message };
  } else if (typeof error.context?.responseText === 'string') {
    const body = parsed(error.context.responseText);
    if (body && typeof body.code === 'string') details = body;
  }
  if (!details) return null;
  const { code, message = '' } = details;
  return {
    code,
    message,
    retryable: details.retryable === true,
    text: TEXTS[code] ?? `The server refused the connection: ${message || code}`,
  };
}
