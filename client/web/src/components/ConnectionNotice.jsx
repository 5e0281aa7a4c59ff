/** Why the server refused the connection, in words (nothing while it has not). */
export default function ConnectionNotice({ text }) {
  if (!text) return null;
  return (
    <p className="connection-notice" role="alert" data-testid="connection-notice">
      {text}
    </p>
  );
}
