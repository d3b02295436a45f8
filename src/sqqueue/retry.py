"""Retry policies: how long a failed message waits before it is delivered again."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before the next attempt, from the number of attempts made so far.

    Build one with the class methods::

        RetryPolicy.immediate()                       # 0 s: the 0.1.0 behaviour
        RetryPolicy.fixed(30)                         # 30 s every time
        RetryPolicy.linear(10, cap=300)               # 10 s, 20 s, 30 s, ... up to 300 s
        RetryPolicy.exponential(1, cap=600)           # ~1 s, 2 s, 4 s, ... up to 600 s, jittered

    Jitter (on by default for exponential) picks a delay uniformly in [d/2, d] so that
    messages failed together do not all come back together.
    """

    kind: Literal["immediate", "fixed", "linear", "exponential"] = "immediate"
    base: float = 0.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: bool = False

    def __post_init__(self) -> None:
        for name in ("base", "factor", "cap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")
        if self.kind not in ("immediate", "fixed", "linear", "exponential"):
            raise ValueError(f"unknown RetryPolicy kind {self.kind!r}")

    @classmethod
    def immediate(cls) -> RetryPolicy:
        return cls("immediate")

    @classmethod
    def fixed(cls, delay: float) -> RetryPolicy:
        return cls("fixed", base=delay, cap=delay)

    @classmethod
    def linear(cls, step: float, cap: float = 3600.0, jitter: bool = False) -> RetryPolicy:
        return cls("linear", base=step, cap=cap, jitter=jitter)

    @classmethod
    def exponential(
        cls, base: float = 1.0, factor: float = 2.0, cap: float = 3600.0, jitter: bool = True
    ) -> RetryPolicy:
        return cls("exponential", base=base, factor=factor, cap=cap, jitter=jitter)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
        n = max(attempts, 1)
        if self.kind == "immediate":
            return 0.0
        if self.kind == "fixed":
            raw = self.base
        elif self.kind == "linear":
            raw = self.base * n
        else:
            try:
                raw = self.base * self.factor ** (n - 1)
            except OverflowError:  # factor ** n past float range: far beyond any cap
                raw = self.cap
        value = min(raw, self.cap)
        if self.jitter and value > 0:
            value = random.uniform(value / 2, value)
        return value
