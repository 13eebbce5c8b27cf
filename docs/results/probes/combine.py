"""Combine run.sh's per-window eval JSONs (/tmp/roll-<workload>-<tag>-<w>.json) into one file:
per window (plan, calibration, agreement, hit rate, speedup, seen/new split, per-layer table)
and over the stream (speedup = sum of full / sum of expected latency)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gati.probes.serving.bundle import Bundle


def main(workload: str, tag: str, out: str, starts: list[int]) -> None:
    windows = []
    for w in starts:
        r = json.loads(Path(f"/tmp/roll-{workload}-{tag}-{w}.json").read_text())
        fit = Bundle.load(f"/tmp/roll-{workload}-{tag}-{w}").manifest["fit"]
        c = r["cascade"]
        windows.append(
            {
                "fit_requests": [w - 3000, w],
                "eval_requests": [w, w + 1000],
                "plan": [f"{x['layer']}:{x['variant']}" for x in r["layers"]],
                "selectors": [x["selector"] for x in r["layers"]],
                "calibration": fit["calibration"],
                **{k: c[k] for k in ("agreement", "hit_rate", "top1", "base_top1")},
                "expected_ms": c["expected_ms"],
                "full_ms": c["full_ms"],
                "speedup_expected": c["speedup_expected"],
                "oracle_speedup_plan": r["oracle"]["speedup"],
                "oracle_speedup_all_candidates": r["oracle"]["speedup_all_candidates"],
                "seen": r.get("seen"),
                "layers": r["layers"],
            }
        )
    n = len(windows)
    full = sum(w["full_ms"] for w in windows)
    overall = {
        "windows": n,
        "agreement": sum(w["agreement"] for w in windows) / n,
        "worst_window_agreement": min(w["agreement"] for w in windows),
        "hit_rate": sum(w["hit_rate"] for w in windows) / n,
        "top1": sum(w["top1"] for w in windows) / n,
        "base_top1": sum(w["base_top1"] for w in windows) / n,
        "speedup_expected": full / sum(w["expected_ms"] for w in windows),
        "oracle_speedup_all_candidates": full
        / sum(w["full_ms"] / w["oracle_speedup_all_candidates"] for w in windows),
    }
    doc = {"workload": workload, "tag": tag, "overall": overall, "windows": windows}
    Path(out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(overall))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], [3000, 4000, 5000, 6000, 7000])
