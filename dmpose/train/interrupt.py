"""Ctrl-C during training, handled so that the saved state is always one the run really passed through.

The first SIGINT does not interrupt the step in progress (between the optimiser step and the step counter
there is no consistent state to save): it is noted, and the loop stops at the next safe point — when it
next waits for data, starts a validation, or ends an epoch — and saves there. While the loop waits for data
or validates, the state is the last completed step's, so a SIGINT there stops at once. A second SIGINT
before the loop has stopped stops at once without saving (the last saved state stays as it was).

Under DDP (`coordinated=True`) the ranks must stop at the same step: a SIGINT is only noted (a second one still
stops at once), every optimiser step all-reduces the ranks' `requested` flags, and the loop passes the outcome to
`agree`; `check` and `safe` stop on that agreed flag, so all ranks stop at the same data wait.

Installed only in the main thread of a process whose SIGINT handler is Python's default (elsewhere a
KeyboardInterrupt — from a callback, say — is handled by the loop as before: it saves the state).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["InterruptGuard"]


class InterruptGuard:
    """Context manager: `requested` after one SIGINT, `forced` after a second; `safe()` marks a region
    (waiting for data, validation) where the saved state would be consistent, so a SIGINT stops at once."""

    def __init__(self, coordinated: bool = False) -> None:
        self.coordinated = coordinated
        self.agreed = False  # coordinated: some rank asked to stop (set by `agree`)
        self.requested = False
        self.forced = False
        self._safe = False
        self._previous = None
        self.installed = False

    def __enter__(self) -> InterruptGuard:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)
            self.installed = False

    def _handle(self, signum, frame) -> None:
        if self._safe and not self.coordinated:
            raise KeyboardInterrupt
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def agree(self, any_rank_requested: bool) -> None:
        """Coordinated: the all-reduced outcome of the ranks' `requested` flags."""
        self.agreed = self.agreed or bool(any_rank_requested)

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if a SIGINT came in since the last safe point (coordinated: if the
        ranks agreed to stop)."""
        if self.agreed if self.coordinated else self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def safe(self) -> Iterator[None]:
        """A region where stopping at once leaves a consistent state; a SIGINT noted earlier stops on entry."""
        self.check()
        before, self._safe = self._safe, True
        try:
            yield
        finally:
            self._safe = before
