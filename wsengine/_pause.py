# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The pause lock: a re-entrant lock that tells the engine when a user wants it.

``threading`` locks are not fair: a reader that releases the lock and takes it again at
once can starve a thread blocked in ``acquire()``, and the engine could not see a pause
coming. So ``engine.pause_lock`` is an ``RLock`` subclass whose public ``acquire`` (and
``with``) counts the user in ``wanted`` before it blocks. The engine's own reader uses the
base class's methods, which are not counted, and steps back while ``wanted`` is non-zero:
a user gets the lock as soon as the reader's current non-blocking pass ends, and no worker
starts another ``on_message`` once a user has asked for it. (A worker that passed its
check an instant before the user asked may still enter its callback: the check and the
call are two steps, and closing that gap would put a lock on every message.)
"""

from __future__ import annotations

import _thread
import threading
from types import TracebackType

__all__ = ["PauseLock", "engine_acquire", "engine_release"]

#: The engine's uncounted acquire and release.
engine_acquire = _thread.RLock.acquire
engine_release = _thread.RLock.release


# typeshed marks RLock final; at run time it is an ordinary base class.
class PauseLock(_thread.RLock):  # type: ignore[misc]
    """``engine.pause_lock``: a ``threading.RLock`` that counts its users.

    ``wanted`` counts user acquisitions asked for and not yet released (blocked ones
    included); ``held`` counts those granted. Both are read without a lock by the engine's
    hot path (a stale read only delays a step back by one message) and written under
    ``_counts_guard``.
    """

    def __init__(self) -> None:
        super().__init__()
        # Guards wanted/held; held for one statement by acquiring and releasing users.
        self._counts_guard = threading.Lock()
        self.wanted = 0
        self.held = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire like ``RLock.acquire``; the engine stops reading and dispatching
        from the moment this is called until the matching ``release``."""
        with self._counts_guard:
            self.wanted += 1
        got = False
        try:
            got = engine_acquire(self, blocking, timeout)
        finally:
            with self._counts_guard:
                if got:
                    self.held += 1
                else:
                    self.wanted -= 1
        return got

    __enter__ = acquire

    def release(self) -> None:
        """Release like ``RLock.release`` (``RuntimeError`` if not owned)."""
        engine_release(self)
        with self._counts_guard:
            self.held -= 1
            self.wanted -= 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def owned(self) -> bool:
        """True if the calling thread holds the lock."""
        return bool(self._is_owned())  # type: ignore[attr-defined]
