# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""SIGTERM for ``run_forever()``: stop gracefully, as on Ctrl-C.

SIGTERM is what ``kill``, systemd, Docker and Kubernetes send; Python's default action for
it ends the process at once, without a close frame. While ``run_forever()`` runs in the
main thread, SIGTERM raises ``KeyboardInterrupt`` there instead, once, and the engine stops
the way it does on Ctrl-C. The previous handler is put back when ``run_forever()`` returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["sigterm_interrupts"]


@contextmanager
def sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """While the block runs in the main thread, the first SIGTERM raises
    ``KeyboardInterrupt("SIGTERM")``; on exit the previous SIGTERM handler is back.

    Yields a function that disarms the handler: call it when the graceful stop begins, so
    that a second signal (SIGTERM after Ctrl-C, or a repeated SIGTERM) does not cut that
    stop short. Disarmed, the handler ignores SIGTERM until the block ends; the process
    manager's SIGKILL remains the last word.

    Outside the main thread signals are left alone (Python runs handlers, and lets them be
    set, only there), and the function yielded does nothing.
    """
    armed = [threading.current_thread() is threading.main_thread()]
    if not armed[0]:
        yield lambda: None
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt("SIGTERM")

    def disarm() -> None:
        armed[0] = False

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield disarm
    finally:
        armed[0] = False
        # None: the previous handler was not set from Python; the default is the best guess.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
