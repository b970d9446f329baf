"""One writer at a time for a file that several processes may build (a converted or assembled
model): an exclusive ``flock`` on a lock file beside it. The atomic rename that publishes the
file is what keeps readers safe; the lock only saves the duplicate work. Without fcntl
(Windows) the rename is the only guard."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    if sys.platform == "win32":
        yield
        return
    import fcntl

    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
