"""Lightning's tqdm progress bar, redrawn by elapsed time instead of every N steps."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import TQDMProgressBar

from dcgmm.errors import ConfigError


class ProgressBar(TQDMProgressBar):
    """:class:`~lightning.pytorch.callbacks.TQDMProgressBar` that redraws a bar at most every
    ``refresh_seconds`` of wall time (and always at a bar's last batch).

    A redraw is not free: it reads the logged values for the bar's postfix (one host read each
    on a GPU) and writes the terminal line, about a millisecond on a CPU. A fixed step count
    cannot suit every topology: every 50 steps is 11 redraws in a 1.4 s epoch of the flat K=25
    GMM (steps of 2 ms) and one redraw every 2.5 s for topology E (steps of 50 ms). By time,
    each gets the same few redraws per second.

    Args:
        refresh_seconds: least wall time between two redraws, in seconds (0: every
            ``refresh_rate``-th step, as Lightning's bar).
        refresh_rate: redraw only on every ``refresh_rate``-th step of those; 0 hides the bar.
        process_position, leave: as for ``TQDMProgressBar``.
    """

    def __init__(self, refresh_seconds: float = 0.5, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        if not refresh_seconds >= 0:  # also rejects NaN
            raise ConfigError(f"callbacks.progress_bar.refresh_seconds={refresh_seconds} must be >= 0 seconds, e.g. 0.5")
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.refresh_seconds = float(refresh_seconds)
        self._last_draw = -math.inf  # time.monotonic() of the latest redraw

    def _should_update(self, current: int, total: int) -> bool:
        """Lightning's per-batch question for every bar (train, validation, test, predict)."""
        if not self.is_enabled:
            return False
        last = current == total
        if not last and current % self.refresh_rate != 0:
            return False
        now = time.monotonic()
        if not last and now - self._last_draw < self.refresh_seconds:
            return False
        self._last_draw = now
        return True
