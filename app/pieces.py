"""The pieces of an answer as a read brings them, joined into events while
coalescing: consecutive text of one kind into one (its log probabilities, when the
upstream sent them, joined alike), consecutive fragments of one tool call into one.
"""

from __future__ import annotations

from .providers.base import TOOL_CALL, Batch, Piece
from .toolcalls import joined as joined_fragments


def joined(batch: Batch) -> tuple[Batch, int]:
    """The batch with consecutive pieces that make one event joined, and how many
    of its events hold more than one piece."""
    events: Batch = [batch[0]]
    merged = 0
    run = False
    for piece in batch[1:]:
        both = _join(events[-1], piece)
        if both is None:
            events.append(piece)
            run = False
        else:
            events[-1] = both
            if not run:
                merged += 1
                run = True
    return events, merged


def _join(first: Piece, second: Piece) -> Piece | None:
    kind = first[0]
    if kind != second[0]:
        return None
    if kind == TOOL_CALL:
        fragment = joined_fragments(first[1], second[1])
        return None if fragment is None else (TOOL_CALL, fragment)
    text = first[1] + second[1]
    if len(first) > 2 or len(second) > 2:
        logprobs = (first[2] if len(first) > 2 else []) + (
            second[2] if len(second) > 2 else []
        )
        return (kind, text, logprobs)
    return (kind, text)
