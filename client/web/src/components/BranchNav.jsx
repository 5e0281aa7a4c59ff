/**
 * ‹ 2/3 ›: which of its siblings a turn is (another answer to the same question, or the
 * question edited), and buttons to show the branch through the previous or next one.
 */
export default function BranchNav({ id, index, count, onSwitch }) {
  return (
    <div className="branch-nav" data-testid="branch-nav">
      <button
        type="button"
        onClick={() => onSwitch(id, -1)}
        disabled={!onSwitch || index <= 1}
        aria-label="Previous version"
        data-testid="branch-previous"
      >
        ‹
      </button>
      <span className="branch-position" data-testid="branch-position">
        {`${index}/${count}`}
      </span>
      <button
        type="button"
        onClick={() => onSwitch(id, 1)}
        disabled={!onSwitch || index >= count}
        aria-label="Next version"
        data-testid="branch-next"
      >
        ›
      </button>
    </div>
  );
}
