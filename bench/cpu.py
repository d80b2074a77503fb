"""CPU time of the processes a measurement involves, to say which one was the bottleneck.

A figure that is limited by the embedded local AWS rather than by Dispatch shows it
here: the emulator near 100 % of one core (its request threads share one GIL)
while the dispatcher has room. Read from ``/proc`` (Linux); elsewhere the figures
are ``None`` and the report says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CpuSample", "Utilisation", "process_cpu_s"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (its threads included), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Wall clock and CPU seconds of some processes at one moment."""

    wall_s: float
    cpu_s: dict[str, float | None]

    @classmethod
    def take(cls, processes: dict[str, int]) -> CpuSample:
        """Sample ``{"emulator": pid, ...}`` now."""
        return cls(
            wall_s=time.monotonic(),
            cpu_s={name: process_cpu_s(pid) for name, pid in processes.items()},
        )


@dataclass(frozen=True, slots=True)
class Utilisation:
    """CPU used between two samples, per process, in % of one core and in seconds."""

    wall_s: float
    cpu_s: dict[str, float | None]

    @classmethod
    def between(cls, start: CpuSample, end: CpuSample) -> Utilisation:
        """What each process used from ``start`` to ``end``."""
        used: dict[str, float | None] = {}
        for name, before in start.cpu_s.items():
            after = end.cpu_s.get(name)
            used[name] = None if before is None or after is None else after - before
        return cls(wall_s=end.wall_s - start.wall_s, cpu_s=used)

    @classmethod
    def combine(cls, parts: Iterable[Utilisation]) -> Utilisation:
        """Several windows added up (processes present in all of them)."""
        items = list(parts)
        names = set.intersection(*(set(p.cpu_s) for p in items)) if items else set()
        cpu: dict[str, float | None] = {}
        for name in sorted(names):
            values = [p.cpu_s[name] for p in items]
            cpu[name] = None if any(v is None for v in values) else sum(v or 0.0 for v in values)
        return cls(wall_s=sum(p.wall_s for p in items), cpu_s=cpu)

    def pct_of_one_core(self, name: str) -> float | None:
        """How busy ``name`` was: 100 means one core the whole time."""
        used = self.cpu_s.get(name)
        if used is None or self.wall_s <= 0:
            return None
        return round(100 * used / self.wall_s, 1)

    def to_json(self) -> dict[str, Any]:
        """CPU seconds and % of one core per process."""
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": {k: None if v is None else round(v, 3) for k, v in self.cpu_s.items()},
            "pct_of_one_core": {k: self.pct_of_one_core(k) for k in self.cpu_s},
        }
