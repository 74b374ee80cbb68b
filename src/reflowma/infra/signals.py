"""Preemption: SIGTERM/SIGINT become a flag checked at step boundaries, then ``Interrupted``.

A job that receives either signal saves its state at the next step (or chunk) boundary and
exits with ``128 + signum``; a rerun resumes from the saved state.
"""

from __future__ import annotations

import signal


class Interrupted(RuntimeError):
    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; "
                         "state saved, rerun to resume")


class PreemptionSignals:
    """Turn SIGTERM/SIGINT into a flag checked at step boundaries."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
