"""One answer's moderated text, cut into the windows that are checked.

The text is the answer's pieces of the moderated kinds, in order. A window is due
once ``window`` characters have come since the last one that passed; it starts
``overlap`` characters before that point (so a phrase cut there is seen whole) and
ends at the last whitespace that came (the word after it may go on in the next
piece, and is checked whole in the next window). At the end the rest is checked,
and the whole text.

In hold mode the pieces themselves wait here, each with the length the text had
once it came: a piece goes out once the text up to its end has passed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ..providers.base import Piece

# How far back the start of a window may move to begin at a word.
_WORD_SNAP = 64
_SPACES = " \n\t\r\f\v\u00a0\u3000"


class Windows:
    def __init__(self, window: int, overlap: int):
        self.window = window
        self.overlap = overlap
        self.length = 0
        # The text up to here passed its windows.
        self.passed = 0
        self._parts: list[str] = []
        # Pieces held back (hold mode): (the text's length at the piece's end, it).
        self._held: deque[tuple[int, Piece]] = deque()
        # The text's length at the end of the last piece released.
        self.released = 0

    # -- the text ----------------------------------------------------------------------

    def add(self, text: str) -> None:
        self._parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def span(self, final: bool = False) -> tuple[int, int] | None:
        """The next window to check, as (start, end) in the text; None when none is
        due (at the end: when everything has passed)."""
        unchecked = self.length - self.passed
        if unchecked <= 0 or (not final and unchecked < self.window):
            return None
        text = self.text()
        end = self.length
        if not final:
            cut = _last_space(text, self.passed, end)
            # A window ends after a space, unless that would leave most of it out.
            if cut is not None and cut + 1 - self.passed >= self.window // 2:
                end = cut + 1
        start = max(0, self.passed - self.overlap)
        if start > 0:
            space = _last_space(text, max(0, start - _WORD_SNAP), start)
            if space is not None:
                start = space + 1
        return start, end

    def passed_to(self, end: int) -> None:
        self.passed = max(self.passed, end)

    # -- the pieces held back (hold mode) ----------------------------------------------

    def hold(self, piece: Piece) -> None:
        self._held.append((self.length, piece))

    def release(self) -> list[Piece]:
        """The pieces whose text has all passed, in order."""
        out = []
        while self._held and self._held[0][0] <= self.passed:
            self.released, piece = self._held.popleft()
            out.append(piece)
        return out

    def release_all(self) -> list[Piece]:
        out = [piece for _, piece in self._held]
        self._held.clear()
        self.released = self.length
        return out

    @property
    def held_chars(self) -> int:
        """Characters of the text held back now."""
        return self.length - self.released if self._held else 0


def _last_space(text: str, start: int, end: int) -> int | None:
    """The index of the last whitespace character in ``text[start:end]``."""
    found = max(text.rfind(space, start, end) for space in _SPACES)
    return found if found >= 0 else None


def seq_at(parts: Iterable[Piece], offset: int, kinds: frozenset[str]) -> int:
    """The ``seq`` of the chunk holding character ``offset`` of the moderated text
    (the text of ``kinds`` in ``parts``); past the end, the next seq."""
    seen = 0
    seq = -1
    for seq, piece in enumerate(parts):  # noqa: B007  (read after the loop)
        if piece[0] in kinds:
            seen += len(piece[1])
            if seen > offset:
                return seq
    return seq + 1
