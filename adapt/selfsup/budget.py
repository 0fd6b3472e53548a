"""The wall time one adaptation may take: its training stages stop early to fit it.

An operator schedules adaptation in a window (overnight, between rush hours)
on whatever machine the camera's worker has. The stages' step counts are
the most a run takes; on a slower machine, or with larger frames, each stage
stops at its share of the time left, and the report says how many steps it
ran. Without a limit (``seconds=None``) every step runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# The flip stage's share of the training time when the pseudo-label stage follows.
# On TUD-Stadtmitte (2 CPU cores) half ran 218 of 300 flip steps and left two full
# rounds of 150 (research/NOTEBOOK.md, "A time budget instead of fixed step counts").
FLIP_SHARE = 0.5
# Rounds planned for: the first gets half of the pseudo-label time, the second the
# rest; a third (the count still moving) runs only on what the first two left.
PLANNED_ROUNDS = 2
# A round that could run less than this fraction of its steps is not started.
MIN_ROUND_FRACTION = 0.25


@dataclass
class TimeBudget:
    seconds: float | None                 # the whole run's wall time; None: no limit
    clock: Callable[[], float] = time.monotonic
    reserve_s: float = 0.0                # kept back for what follows training: the candidate's statistics, the gate, publishing
    start: float = field(init=False)

    def __post_init__(self) -> None:
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"time budget must be positive, found {self.seconds}")
        self.start = self.clock()

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left for training (inf without a limit; may be negative)."""
        if self.seconds is None:
            return math.inf
        return self.seconds - self.reserve_s - self.elapsed()

    def time_up(self, share: float = 1.0) -> TimeUp | None:
        """True once a stage given ``share`` of the training time left now is over it; None without a limit."""
        if self.seconds is None:
            return None
        deadline = self.clock() + max(0.0, share * self.left())
        return lambda: self.clock() >= deadline

    @staticmethod
    def round_share(done: int) -> float:
        """Share of the time left for pseudo-label round ``done + 1``: see :data:`PLANNED_ROUNDS`."""
        return 1.0 / max(1, PLANNED_ROUNDS - done)


TimeUp = Callable[[], bool]


def steps_within(steps: int, time_up: TimeUp | None) -> Iterator[int]:
    """0 .. steps-1, ending early once ``time_up()``."""
    for step in range(steps):
        if time_up is not None and time_up():
            return
        yield step


STOPPED = "time budget"  # how a stage's "stopped" note begins when the budget stopped it


def stopped_by_budget(detail: str) -> dict:
    """The report's note on a stage or round the budget stopped."""
    return {"stopped": f"{STOPPED}: {detail}"}


def stopped_early(done: int, planned: int) -> dict:
    """The report's note on a stage the budget cut short (empty when it ran in full)."""
    return {} if done >= planned else stopped_by_budget(f"{done} of {planned} steps")
