"""Incremental detokenization with stop strings handled across token boundaries."""

from __future__ import annotations

import codecs


class TextStream:
    """Turns token pieces (bytes) into releasable text.

    Multi-byte UTF-8 characters split over tokens are joined before release, and any suffix that
    could be the start of a stop string is held back, so a partial stop string is never emitted.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to show."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        return self._release()

    def flush(self) -> str:
        """End of generation: release everything still held (unless a stop string matched).

        An incomplete UTF-8 sequence at the very end (max_tokens cut a character in two) is
        dropped rather than shown as U+FFFD.
        """
        if self.stopped:
            return ""
        self._decoder.reset()
        out, self._pending = self._pending, ""
        return out

    def _release(self) -> str:
        if not self._stop:
            out, self._pending = self._pending, ""
            return out
        first = -1
        for s in self._stop:
            at = self._pending.find(s)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            out = self._pending[:first]
            self._pending = ""
            self.stopped = True
            return out
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out
