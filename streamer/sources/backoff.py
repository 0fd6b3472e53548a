"""Exponential backoff with full jitter between reconnect attempts.

Full jitter (a delay drawn uniformly from [0, min(max, initial * 2**n)]) spreads
many cameras that lost the same server apart, instead of having them retry in
lockstep and knock it over again when it comes back.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s; found {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0  # consecutive, since the last reset
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        # min() before the power would overflow after ~1000 failures; cap the exponent instead.
        return min(self.max_s, self.initial_s * 2 ** min(self.failures, 64))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
