"""How big each measurement is, full and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The sizes of one benchmark run."""

    mode: str
    throughput_tasks: int
    rounds: int
    sizes: tuple[int, ...]
    dispatchers: tuple[int, ...]
    scaling_tasks: int
    latency_probes: int
    idle_ticks: int
    calibration_rounds: int
    depth_rounds: int
    sensitivity_tasks: int  # 0: not measured
    round_trip_tasks: int
    round_trip_rounds: int

    @classmethod
    def full(cls) -> Plan:
        """What the issue asks for: 5,000 tasks, 3 paired rounds, up to 20,000 queued."""
        return cls(
            mode="full",
            throughput_tasks=5_000,
            rounds=3,
            sizes=(1_000, 5_000, 20_000),
            dispatchers=(1, 2, 4),
            scaling_tasks=5_000,
            latency_probes=300,
            idle_ticks=60,
            calibration_rounds=100,
            depth_rounds=25,
            sensitivity_tasks=2_000,
            round_trip_tasks=1_000,
            round_trip_rounds=3,
        )

    @classmethod
    def quick(cls) -> Plan:
        """The same measurements on small sizes, in under a minute."""
        return cls(
            mode="quick",
            throughput_tasks=200,
            rounds=2,
            sizes=(100, 200, 400),
            dispatchers=(1, 2, 4),
            scaling_tasks=120,
            latency_probes=30,
            idle_ticks=10,
            calibration_rounds=20,
            depth_rounds=10,
            sensitivity_tasks=0,
            round_trip_tasks=100,
            round_trip_rounds=1,
        )

    def drain_timeout_s(self, tasks: int) -> float:
        """A bound on one drain: generous (10 tasks/s), so only a hang reaches it."""
        return 30.0 + tasks / 10
