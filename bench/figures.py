"""report.json's figures from the per-request arrays (requests.npz), and those arrays.

Measuring writes every request of every run into flat arrays keyed `workload/system/field`
(`pack`); everything the report states is computed from them (`figures`), so `--rerender`
recomputes the same figures from requests.npz without measuring again.
"""

from __future__ import annotations

import numpy as np

from bench import analysis
from bench.systems import SYSTEMS
from gati.workloads import Stream


def pack(
    runs: dict[str, dict[str, analysis.Requests]],
    streams: dict[str, Stream],
    base: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Every request of every run as compact arrays (what requests.npz holds)."""
    arrays: dict[str, np.ndarray] = {}
    for w, systems in runs.items():
        arrays[f"{w}/base"] = base[w].astype(np.int16)
        arrays[f"{w}/truth"] = truth[w].astype(np.int16)
        arrays[f"{w}/phase"] = streams[w].phase.astype(np.int32)
        arrays[f"{w}/source"] = streams[w].source.astype(np.int32)
        for system, r in systems.items():
            p = f"{w}/{system}/"
            arrays[p + "latency_ms"] = r.latency_ms.astype(np.float32)
            arrays[p + "labels"] = r.labels.astype(np.int16)
            arrays[p + "hit"] = r.hit
            arrays[p + "exact"] = r.exact
            arrays[p + "version"] = r.version.astype(np.int32)
            arrays[p + "sent_s"] = r.sent_s.astype(np.float32)
            arrays[p + "exit_layer"] = np.asarray(r.exit_layer, dtype="U32")
            arrays[p + "meta"] = np.asarray([r.errors, r.wall_s], dtype=np.float64)
    return arrays


def runs_from(arrays: dict[str, np.ndarray], workload: str, system: str) -> analysis.Requests:
    p = f"{workload}/{system}/"
    errors, wall = arrays[p + "meta"]
    return analysis.Requests(
        arrays[p + "latency_ms"].astype(np.float64),
        arrays[p + "labels"].astype(np.int64),
        arrays[p + "hit"].astype(bool),
        arrays[p + "exact"].astype(bool),
        tuple(str(e) for e in arrays[p + "exit_layer"]),
        arrays[p + "version"].astype(np.int64),
        arrays[p + "sent_s"].astype(np.float64),
        int(errors),
        float(wall),
    )


def recovery_window(s: dict) -> int:
    """Trailing requests recovery is judged over: 100, fewer when phases are short (quick)."""
    return max(10, min(analysis.RECOVERY_WINDOW, s["drift_every"] // 4))


def figures(meta: dict, arrays: dict[str, np.ndarray]) -> dict:
    """Everything report.json holds, computed from the per-request arrays."""
    s = meta["settings"]
    out: dict = {"workloads": {}}
    table_rows: dict[str, dict[str, dict]] = {}
    base_top1: dict[str, float] = {}
    recoveries: dict[str, list[dict]] = {}
    for w in s["workloads"]:
        base, truth = arrays[f"{w}/base"].astype(np.int64), arrays[f"{w}/truth"].astype(np.int64)
        changes = analysis.change_points(arrays[f"{w}/phase"])
        window = recovery_window(s)
        runs = {x: runs_from(arrays, w, x) for x in s["systems"]}
        plain = runs["plain"]
        entry: dict = {
            "requests": len(base),
            "distinct_images": len(np.unique(arrays[f"{w}/source"])),
            "base_top1": float((base == truth).mean()),
            "change_points": changes,
            "recovery_window": window,
            "systems": {},
        }
        base_top1[w] = entry["base_top1"]
        table_rows[w] = {}
        for x, r in runs.items():
            summary = analysis.summarize(r, base, truth, None if x == "plain" else plain)
            table_rows[w][x] = summary
            sys_entry = {
                "summary": summary,
                "series": analysis.series(r, base),
                "exits": analysis.exits(r),
            }
            if x != "plain":
                sys_entry["exit_profile"] = analysis.exit_profile(r, plain)
            if changes:
                sys_entry["recovery"] = analysis.recovery(r.early, r.sent_s, changes, window)
                if w == "drift":
                    recoveries[x] = sys_entry["recovery"]
            if x in meta.get("trainer", {}).get(w, {}):
                sys_entry["trainer"] = meta["trainer"][w][x]
            entry["systems"][x] = sys_entry
        out["workloads"][w] = entry
    learned = tuple(x for x in s["systems"] if SYSTEMS[x].caches)
    out["goals"] = [g.as_dict() for g in analysis.goals(table_rows, base_top1, recoveries, learned)]
    return out
