"""The report's PNG plots (matplotlib, Agg backend: no display needed).

Each function takes the figures `gati bench report` keeps in report.json (plus per-request
latencies for the CDF) and writes one file; nothing here measures anything.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
import numpy as np

COLORS = {
    "plain": "#555555",
    "exact": "#1f77b4",
    "static": "#ff7f0e",
    "online": "#2ca02c",
    "online-cold": "#9467bd",
}
DPI = 110


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency_cdf(latency_ms: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """One panel per workload: the CDF of per-request latency of every system."""
    fig, axes = _grid(len(latency_ms))
    for ax, (workload, systems) in zip(axes, latency_ms.items(), strict=True):
        for system, lat in systems.items():
            x = np.sort(lat)
            y = np.arange(1, len(x) + 1) / len(x)
            ax.plot(x, y, label=system, color=COLORS.get(system), linewidth=1.4)
        ax.set_xscale("log")
        ax.set_title(workload)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("share of requests")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def timeline(
    workload: str,
    series: dict[str, dict[str, list[float]]],
    changes: list[int],
    clock: tuple[np.ndarray, np.ndarray] | None,
    path: Path,
) -> Path:
    """Hit rate (either cache) and mean latency per bin of requests, every system; change
    points as dashed lines. `clock` (request index, seconds since the stream started) labels
    a top axis in seconds."""
    fig, (hit_ax, lat_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for system, s in series.items():
        x = np.asarray(s["start"], dtype=np.float64)
        x += (x[1] - x[0]) / 2 if len(x) > 1 else 0.0  # the middle of each bin
        color = COLORS.get(system)
        if system != "plain":
            hit_ax.plot(x, s["early_rate"], label=system, color=color, linewidth=1.4)
        lat_ax.plot(x, s["mean_ms"], label=system, color=color, linewidth=1.2)
    for ax in (hit_ax, lat_ax):
        for c in changes:
            ax.axvline(c, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.grid(True, alpha=0.3)
    hit_ax.set_ylabel("hit rate (learned or exact)")
    hit_ax.set_ylim(-0.02, 1.02)
    hit_ax.set_title(f"{workload}: hit rate and latency over the stream")
    hit_ax.legend(loc="upper left", fontsize=8, ncol=4)
    lat_ax.legend(loc="upper left", fontsize=8, ncol=5)
    lat_ax.set_ylabel("mean latency (ms)")
    lat_ax.set_xlabel("request")
    lat_ax.set_ylim(bottom=0)
    if clock is not None and len(clock[0]) > 1:
        idx, secs = clock

        def to_s(v):
            return np.interp(v, idx, secs)

        def to_i(v):
            return np.interp(v, secs, idx)

        top = hit_ax.secondary_xaxis("top", functions=(to_s, to_i))
        top.set_xlabel("seconds since the stream started")
    return _save(fig, path)


def exits(counts: dict[str, dict[str, dict[str, int]]], order: list[str], path: Path) -> Path:
    """Share of requests answered at each exit (learned-cache layers in model order, then
    exact and full), one panel per workload, one bar per system."""
    fig, axes = _grid(len(counts))
    for ax, (workload, systems) in zip(axes, counts.items(), strict=True):
        used = [e for e in order if any(c.get(e) for c in systems.values())]
        if not used:
            ax.set_title(f"{workload}: no exits")
            continue
        width = 0.8 / max(1, len(systems))
        pos = np.arange(len(used))
        for k, (system, c) in enumerate(systems.items()):
            total = sum(c.values()) or 1
            ax.bar(
                pos + k * width,
                [c.get(e, 0) / total for e in used],
                width,
                label=system,
                color=COLORS.get(system),
            )
        ax.set_xticks(pos + width * (len(systems) - 1) / 2)
        ax.set_xticklabels(used, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1)
        ax.set_title(workload)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)
