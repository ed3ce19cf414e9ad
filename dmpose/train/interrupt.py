"""Ctrl-C and SIGTERM during training, handled so that the saved state is always one the run really passed
through. SIGTERM (what a cluster scheduler or `docker stop` sends) is handled exactly as a Ctrl-C (SIGINT); the
guard remembers which signal came first (`signal_name`), so that the run can say what stopped it.

The first SIGINT does not interrupt the step in progress (between the optimiser step and the step counter
there is no consistent state to save): it is noted, and the loop stops at the next safe point — when it
next waits for data, starts a validation, or ends an epoch — and saves there. While the loop waits for data
or validates, the state is the last completed step's, so a SIGINT there stops at once. A second SIGINT
before the loop has stopped stops at once without saving (the last saved state stays as it was).

Under DDP (`coordinated=True`) the ranks must stop at the same step: a SIGINT is only noted (a second one still
stops at once), every optimiser step all-reduces the ranks' `requested` flags, and the loop passes the outcome to
`agree`; `check` and `safe` stop on that agreed flag, so all ranks stop at the same data wait.

Each handler is installed only in the main thread, and only where the signal still has its default handler
(SIGINT: Python's KeyboardInterrupt; SIGTERM: the OS default); elsewhere a KeyboardInterrupt — from a callback,
say — is handled by the loop as before: it saves the state.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["InterruptGuard"]


class InterruptGuard:
    """Context manager: `requested` after one SIGINT or SIGTERM, `forced` after a second; `safe()` marks a region
    (waiting for data, validation) where the saved state would be consistent, so a signal stops at once there."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, coordinated: bool = False) -> None:
        self.coordinated = coordinated
        self.agreed = False  # coordinated: some rank asked to stop (set by `agree`)
        self.requested = False
        self.forced = False
        self.signum = 0  # the first signal that asked to stop (coordinated: the one the ranks agreed on)
        self._safe = False
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "KeyboardInterrupt"

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is defaults[sig]:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if not self.signum:
            self.signum = int(signum)
        if self._safe and not self.coordinated:
            raise KeyboardInterrupt
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def agree(self, signum: int) -> None:
        """Coordinated: the all-reduced outcome of the ranks' requests: the largest signal number any rank got
        (0: none)."""
        if signum and not self.agreed:
            self.agreed = True
            self.signum = self.signum or int(signum)

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if a signal came in since the last safe point (coordinated: if the
        ranks agreed to stop)."""
        if self.agreed if self.coordinated else self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def safe(self) -> Iterator[None]:
        """A region where stopping at once leaves a consistent state; a signal noted earlier stops on entry."""
        self.check()
        before, self._safe = self._safe, True
        try:
            yield
        finally:
            self._safe = before
