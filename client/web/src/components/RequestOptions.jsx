/**
 * The request options a `?options=` query set for every question of this tab (their
 * names; the whole JSON on hover), or why the query was ignored.
 */
export default function RequestOptions({ options, problem }) {
  if (problem) {
    return (
      <span className="request-options is-ignored" role="status" data-testid="request-options">
        {problem}
      </span>
    );
  }
  if (!options) return null;
  return (
    <span className="request-options" title={JSON.stringify(options, null, 2)} data-testid="request-options">
      options: {Object.keys(options).join(', ')}
    </span>
  );
}
