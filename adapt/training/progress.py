"""Progress for long jobs: a tqdm bar on a terminal, plain log lines otherwise.

Adaptation and training often run under a scheduler with output going to a
file, where a bar redrawn with carriage returns is unreadable (and tqdm hides
itself). There we print one line at most every ``every_s`` seconds, plus the
last one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class LogProgress:
    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, every_s: float):
        self.iterable, self.desc, self.every_s = iterable, desc, every_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, object] = {}

    def set_postfix(self, **kw: object) -> None:
        self.postfix = kw

    def _line(self, i: int, t0: float) -> None:
        of = f"/{self.total}" if self.total else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {i}{of} in {time.monotonic() - t0:.0f} s {extra}".rstrip(), file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[T]:
        t0 = last = time.monotonic()
        i = 0
        for i, item in enumerate(self.iterable, 1):
            yield item
            if time.monotonic() - last >= self.every_s:
                last = time.monotonic()
                self._line(i, t0)
        self._line(i, t0)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = True, every_s: float = 30.0):
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
    return LogProgress(iterable, desc, total, every_s)
