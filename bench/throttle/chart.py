"""The benchmark at a glance: rate per second and requests in flight against the limits.

One panel per representative scenario (chosen by :func:`pick`), drawn from the
``series`` each result carries, so the chart can be redrawn from the JSON alone.
matplotlib is optional (the ``bench`` extra): without it :func:`draw` says so
and the rest of the benchmark is unaffected.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["draw", "pick"]


def pick(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """50/s with one and with the most dispatchers, the capped run, the adaptive runs."""
    ran = [r for r in results if "series" in r]
    at_50 = sorted(
        (r for r in ran if r["kind"] == "accuracy" and r["rate_per_s"] == 50),
        key=lambda r: r["dispatchers"],
    )
    chosen = at_50[:1] + at_50[-1:] if len(at_50) > 1 else at_50
    chosen += [r for r in ran if r["kind"] in ("cap", "adaptive")]
    return chosen


WORST_BACKLOGS = 3
"""How many backlog drains the chart shows: those furthest behind their ideal."""


def pick_backlogs(drains: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drains furthest behind their ideal (makespan over ideal), worst first."""
    ran = [d for d in drains if "series" in d]
    ran.sort(key=lambda d: d["makespan_s"] - d["ideal_makespan_s"], reverse=True)
    return ran[:WORST_BACKLOGS]


def draw(results: Sequence[dict[str, Any]], drains: Sequence[dict[str, Any]] = ()) -> bytes:
    """The PNG; ImportError when matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = pick(results)
    backlogs = pick_backlogs(drains)
    if not panels and not backlogs:
        raise ValueError("no scenario ran: nothing to draw")
    count = len(panels) + len(backlogs)
    figure, axes = plt.subplots(
        count, 1, figsize=(11, 3.3 * count), squeeze=False, layout="constrained"
    )
    for ax, result in zip(axes[: len(panels), 0], panels, strict=True):
        _panel(ax, result)
    for ax, drain in zip(axes[len(panels) :, 0], backlogs, strict=True):
        _backlog_panel(ax, drain)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _panel(ax: Any, r: dict[str, Any]) -> None:
    series = r["series"]
    # Whole seconds of the window only: the last bin is the partial second after SIGTERM.
    whole = max(1, int(r["window_s"]))
    per_second = series["per_second"][:whole]
    seconds = list(range(len(per_second) + 1))
    ax.stairs(
        per_second,
        seconds,
        baseline=None,
        color="tab:blue",
        linewidth=1.6,
        label="achieved /s (backend)",
    )
    ax.axhline(r["rate_per_s"], color="tab:blue", linestyle="--", linewidth=1, label="rate limit")
    adaptive = r.get("adaptive")
    if adaptive:
        halved = adaptive["halved_at_s"]
        ax.plot(
            [0, halved, halved, whole],
            [adaptive["ceiling_before_per_s"]] * 2 + [adaptive["ceiling_after_per_s"]] * 2,
            color="black",
            linewidth=1.2,
            label=f"backend capacity {adaptive['capacity_before']} → "
            f"{adaptive['capacity_after']} (/ hold = ceiling /s)",
        )
        ax.bar(
            [s + 0.5 for s in range(whole)],
            series["overloads_per_second"][:whole],
            width=0.8,
            color="tab:red",
            alpha=0.45,
            label="503 /s",
        )
        for k, samples in enumerate(series["effective_rate"]):
            if samples:
                ax.plot(
                    [t for t, _ in samples],
                    [v for _, v in samples],
                    color="tab:green",
                    linewidth=1.2,
                    label="effective rate (AIMD)" if k == 0 else None,
                )
        ax.axvline(halved, color="grey", linestyle=":", linewidth=1)
    ax.set_ylabel("tasks per second")
    ax.set_xlabel("seconds since go")
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, whole)

    right = ax.twinx()
    step = series["step_s"]
    in_flight = series["in_flight"][: round(whole / step)]
    right.plot(
        [k * step for k in range(len(in_flight))],
        in_flight,
        color="tab:orange",
        linewidth=0.8,
        alpha=0.8,
        label="in flight at backend",
    )
    if r["max_concurrency"] is not None:
        right.axhline(r["max_concurrency"], color="tab:orange", linestyle="--", label="cap")
    right.set_ylabel("in flight")
    top = max([*in_flight, r["max_concurrency"] or 0, 1]) * 1.3
    if adaptive:
        # The same scale as the ceiling on the left: capacity c sits where c / hold does.
        top = ax.get_ylim()[1] * r["work_ms"] / 1000
    right.set_ylim(bottom=0, top=top)

    title = f"{r['name']}: {r['rate_per_s']:g}/s burst {r['burst']}, {r['dispatchers']} disp."
    if r["achieved_rate_per_s"] is not None and not adaptive:
        title += f" — achieved {r['achieved_rate_per_s']:.2f}/s ({r['error_pct']:+.2f} %)"
    if r["max_concurrency"] is not None:
        title += f", peak {r['peak_concurrency']} / cap {r['max_concurrency']}"
    if adaptive:
        stop = adaptive["overloads_stop_after_s"]
        title += ", 503s stop " + ("never" if stop is None else f"{stop:.1f} s after halving")
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    ax.legend(
        handles + more_handles,
        labels + more_labels,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.2),
        ncol=4,
        frameon=False,
    )


def _backlog_panel(ax: Any, d: dict[str, Any]) -> None:
    """Cumulative starts over time against the ideal line of the same limits."""
    offsets, ideal = d["series"]["offsets"], d["series"]["ideal"]
    counts = list(range(1, len(offsets) + 1))
    ax.step(offsets, counts, where="post", label="measured starts")
    ax.step(ideal, counts, where="post", linestyle="--", label="ideal")
    ax.set_title(
        f"{d['name']}: makespan {d['makespan_s']} s, ideal {d['ideal_makespan_s']} s, "
        f"lateness p99 {d['lateness_s']['p99']} s"
    )
    ax.set_xlabel("seconds since the first start")
    ax.set_ylabel("tasks started")
    ax.legend(loc="lower right")
