"""The chart: throughput and requests per task by workload size, and by dispatcher count.

Drawn from the sections alone (so it can be redrawn from the JSON). matplotlib is
optional (the ``bench`` extra): without it :func:`draw` raises ImportError and
the rest of the benchmark is unaffected.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from bench.analysis import TARGETS

__all__ = ["draw"]

_TARGET = {t.key: t.bound for t in TARGETS}


def draw(sections: Mapping[str, Any]) -> bytes:
    """The PNG; ImportError without matplotlib, ValueError when nothing was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    growth = sections.get("growth")
    if not isinstance(growth, list) or not growth:
        raise ValueError("the growth measurement did not run: nothing to draw")
    sizes = [p["tasks"] for p in growth]
    figure, (speed, requests, scale) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")

    speed.plot(sizes, [p["drain_tasks_per_s"] for p in growth], "o-", label="Dispatch drain")
    speed.plot(sizes, [p["enqueue_tasks_per_s"] for p in growth], "s--", label="Dispatch enqueue")
    baseline = sections.get("throughput", {}).get("baseline", {})
    tasks = sections.get("throughput", {}).get("tasks")
    if baseline.get("drain_tasks_per_s") and tasks:
        speed.plot([tasks], [baseline["drain_tasks_per_s"]], "x", markersize=10, color="black")
        speed.annotate(
            "baseline drain",
            (tasks, baseline["drain_tasks_per_s"]),
            xytext=(6, 6),
            textcoords="offset points",
        )
    speed.set(xscale="log", xlabel="tasks", ylabel="tasks/s", title="Throughput by workload size")
    _size_ticks(speed, sizes)
    speed.set_ylim(bottom=0)
    speed.legend()

    requests.plot(sizes, [p["aws_requests_per_task"] for p in growth], "o-", label="all AWS")
    requests.plot(sizes, [p["sqs_requests_per_task"] for p in growth], "s-", label="SQS")
    requests.axhline(
        _TARGET["aws_requests_per_task"], linestyle=":", color="tab:blue", label="target, all AWS"
    )
    requests.axhline(
        _TARGET["sqs_requests_per_task"], linestyle=":", color="tab:orange", label="target, SQS"
    )
    requests.set(
        xscale="log",
        xlabel="tasks",
        ylabel="requests per task",
        title="AWS requests per task (Dispatch)",
    )
    requests.set_ylim(bottom=0)
    _size_ticks(requests, sizes)
    requests.legend()

    scaling = sections.get("scaling")
    if isinstance(scaling, list) and scaling:
        counts = [s["dispatchers"] for s in scaling]
        scale.bar(
            [str(c) for c in counts],
            [s["drain_tasks_per_s"] for s in scaling],
            color="tab:green",
            label="drain tasks/s",
        )
        cpu = scale.twinx()
        cpu.plot(
            [str(c) for c in counts],
            [s["emulator_cpu_pct_of_one_core"] or 0 for s in scaling],
            "o-",
            color="tab:red",
            label="emulator CPU % of a core",
        )
        cpu.set(ylabel="emulator CPU %", ylim=(0, 120))
        cpu.legend(loc="lower right")
    scale.set(xlabel="dispatcher processes", ylabel="tasks/s", title="Scaling on one emulator")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _size_ticks(ax: Any, sizes: list[int]) -> None:
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()
