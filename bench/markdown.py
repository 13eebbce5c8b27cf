"""report.md of `gati bench report`, written from report.json's figures (no measuring here).

The text states each figure against the goal it answers to (the project's targets) and the
paper's headline, as measured, met or not; hand-written analysis comes in through `notes`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bench import analysis
from bench.systems import SYSTEMS

PAPER_SPEEDUP = 7.69  # Balasubramanian et al. 2021, best case, workloads with temporal locality


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def summary_rows(report: dict) -> list[list[str]]:
    rows = []
    for w, entry in report["workloads"].items():
        for x, e in entry["systems"].items():
            s = e["summary"]
            early = s["exact_hit_rate"] if x == "exact" else s["hit_rate"]
            rows.append(
                [
                    w,
                    x,
                    _f(s["mean_ms"]),
                    _f(s["p50_ms"]),
                    _f(s["p99_ms"]),
                    _f(s["speedup_mean"], "{:.2f}x") if x != "plain" else "1 (ref)",
                    _f(s["speedup_p50"], "{:.2f}x") if x != "plain" else "1 (ref)",
                    _pct(early),
                    _pct(s["agreement"], 2),
                    _pct(s["worst_window_agreement"], 2),
                    _pct(s["top1"], 2),
                    _f(s["miss_overhead"], "{:.3f}x") if x != "plain" else "-",
                    str(s["errors"]),
                ]
            )
    return rows


SUMMARY_HEADERS = (
    "workload",
    "system",
    "mean ms",
    "p50 ms",
    "p99 ms",
    "speedup (mean)",
    "speedup (p50)",
    "hit rate",
    "agreement",
    "worst 1000",
    "top-1",
    "miss path",
    "errors",
)


def _goal_rows(report: dict) -> list[list[str]]:
    rows = []
    for g in report["goals"]:
        v = g["measured"]
        if v is None:
            shown = "-"
        elif "agreement" in g["goal"]:
            shown = _pct(v, 2)
        elif "reduction" in g["goal"] or "miss path" in g["goal"]:
            shown = f"{v:.2f}x"
        else:
            shown = f"{v:.2f}"
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        rows.append([g["goal"], g["workload"], g["system"], g["target"], shown, met])
    return rows


def _best(report: dict) -> tuple[float, str, str] | None:
    best = None
    for w, entry in report["workloads"].items():
        for x, e in entry["systems"].items():
            v = e["summary"]["speedup_mean"]
            if v is not None and SYSTEMS[x].caches and (best is None or v > best[0]):
                best = (v, w, x)
    return best


def findings(report: dict) -> list[str]:
    """Plain statements of what was measured against each goal (generated, not judged)."""
    out = []
    work = report["workloads"]
    gati = "online" if any("online" in e["systems"] for e in work.values()) else "static"
    for w, need in analysis.SPEEDUP_GOALS.items():
        if w not in work:
            continue
        sy = work[w]["systems"]
        parts = [
            f"{x} {sy[x]['summary']['speedup_mean']:.2f}x "
            f"(hit rate {_pct(sy[x]['summary']['hit_rate'])})"
            for x in ("static", "online", "online-cold")
            if x in sy
        ]
        v = sy.get(gati, {}).get("summary", {}).get("speedup_mean")
        verdict = "met" if v is not None and v >= need else "**not met**"
        out.append(f"`{w}`: goal >= {need:g}x for gati ({gati}): {verdict}; " + "; ".join(parts))
    if "repeats" in work and "exact" in work["repeats"]["systems"]:
        s = work["repeats"]["systems"]["exact"]["summary"]
        out.append(
            f"`repeats` (the exact-match cache's best case): exact cache {s['speedup_mean']:.2f}x "
            f"at {_pct(s['exact_hit_rate'])} hits; the learned caches answer near-copies too."
        )
    if "instance-locality" in work and "exact" in work["instance-locality"]["systems"]:
        s = work["instance-locality"]["systems"]["exact"]["summary"]
        out.append(
            f"`instance-locality`: the exact-match cache hits {_pct(s['exact_hit_rate'])} "
            "(perturbed recurrences are never byte-identical)."
        )
    misses = [
        (e["systems"][x]["summary"]["miss_overhead"], w, x)
        for w, e in work.items()
        for x in e["systems"]
        if SYSTEMS[x].caches and e["systems"][x]["summary"]["miss_overhead"] is not None
    ]
    if misses:
        worst = max(misses)
        out.append(
            f"Miss path (requests no cache answered, against the same requests served plain): "
            f"worst {worst[0]:.3f}x ({worst[2]} on `{worst[1]}`), goal <= "
            f"{analysis.MISS_OVERHEAD_LIMIT:.2f}x."
        )
    bad = [
        g
        for g in report["goals"]
        if "agreement" in g["goal"] and g["met"] is False and g["system"] == gati
    ]
    if bad:
        listed = ", ".join(f"`{g['workload']}` {g['goal']} {_pct(g['measured'], 2)}" for g in bad)
        out.append(f"Agreement below target for gati ({gati}): {listed}.")
    elif any("agreement" in g["goal"] and g["system"] == gati for g in report["goals"]):
        out.append(f"Agreement held for gati ({gati}) over every stream and every window.")
    best = _best(report)
    if best is not None:
        out.append(
            f"Paper: up to {PAPER_SPEEDUP}x lower latency on workloads with temporal locality. "
            f"Best ratio in this run: {best[0]:.2f}x ({best[2]} on `{best[1]}`), "
            f"{best[0] / PAPER_SPEEDUP:.0%} of it."
        )
    return out


def _recovery_rows(report: dict) -> list[list[str]]:
    rows = []
    entry = report["workloads"].get("drift")
    if entry is None:
        return rows
    for x, e in entry["systems"].items():
        if not SYSTEMS[x].caches and x != "exact":
            continue
        for r in e.get("recovery", []):
            rows.append(
                [
                    x,
                    str(r["change_at"]),
                    _pct(r["before_hit_rate"]),
                    _pct(r["dip_hit_rate"]),
                    _pct(r["steady_hit_rate"]),
                    _f(r["recovery_s"], "{:.1f} s"),
                    "-" if r["recovery_requests"] is None else str(r["recovery_requests"]),
                    r["status"],
                ]
            )
    return rows


def _exit_rows(report: dict) -> list[list[str]]:
    """Per learned system, every exit over all workloads: requests, and plain serving's mean
    latency over the system's on those same requests (> 1: answering there saved time)."""
    rows = []
    systems = {x for e in report["workloads"].values() for x in e["systems"]}
    for x in [x for x in SYSTEMS if x in systems and SYSTEMS[x].caches]:
        agg: dict[str, list[float]] = {}
        for e in report["workloads"].values():
            for name, p in e["systems"].get(x, {}).get("exit_profile", {}).items():
                a = agg.setdefault(name, [0, 0.0, 0.0])
                a[0] += p["requests"]
                a[1] += p["requests"] * p["mean_ms"]
                a[2] += p["requests"] * p["plain_mean_ms"]
        total = sum(a[0] for a in agg.values()) or 1
        for name in sorted(agg, key=exit_order):
            n, ms, plain_ms = agg[name]
            rows.append(
                [
                    x,
                    name,
                    str(int(n)),
                    _pct(n / total),
                    _f(ms / n),
                    _f(plain_ms / n),
                    f"{plain_ms / ms:.2f}x",
                ]
            )
    return rows


def exit_order(name: str) -> tuple:
    """Cut names in model order ('layer1.2' < 'layer2.0' < 'layer10.0'), exact and full last."""
    if name in (analysis.EXACT, analysis.FULL):
        return (1, name == analysis.FULL, name)
    parts = re.split(r"(\d+)", name)
    return (0, tuple(int(p) if p.isdigit() else p for p in parts))


def _trainer_rows(report: dict) -> list[list[str]]:
    rows = []
    for w, entry in report["workloads"].items():
        for x, e in entry["systems"].items():
            t = e.get("trainer")
            if not t:
                continue
            rows.append(
                [
                    w,
                    x,
                    str(t.get("rounds", 0)),
                    _f(t.get("round_s_mean"), "{:.1f} s"),
                    str(t.get("published", 0)),
                    str(t.get("rejected", 0)),
                    str(t.get("failed", 0)),
                    ", ".join(f"v{v}" for v in e["summary"]["bundle_versions"]),
                ]
            )
    return rows


def render(report: dict, images: dict[str, str], notes: str | None = None) -> str:
    """The whole report.md; `images` maps a plot's role to its file name beside it."""
    s = report["settings"]
    env = report["environment"]
    git = report["git"]
    lines = [
        f"# gati bench report: {s['arch']}, {len(s['workloads'])} workloads",
        "",
        "Plain serving, an exact-match response cache, static early exits and gati with online "
        "learning answer the same request streams, in one run on one machine. Ratios are "
        "against plain serving on the identical stream; agreement is with the base model's own "
        "answer for every request; top-1 is against the ground truth.",
        "",
        "## Run",
        "",
        "```",
        report.get("command") or "(called as a function)",
        "```",
        "",
        f"- commit `{git['commit']}`" + (" plus uncommitted changes" if git["dirty"] else ""),
        f"- {env['time']}, {env['machine']}, Python {env['python']}, torch {env['torch']}; "
        f"total {report['timings']['total_s'] / 60:.1f} min",
        f"- {s['requests']} requests per workload, batch 1, one client sending request i to "
        "every system before request i + 1 to any (who goes first rotates), so load from "
        "elsewhere falls on all systems alike"
        + (f"; paced at {s['rate']:g} requests/s per system" if s["rate"] else "")
        + f"; stream seed {s['seed']}; torch intra-op threads per inference service: "
        + (str(s["threads"]) if s["threads"] else "torch's default"),
        f"- offline probes fitted on images {s['fit_start']}..{s['fit_stop']} of `{s['data']}`; "
        f"streams built over images {s['stream_start']}..{s['stream_stop'] or 'end'} (never "
        "seen by the offline probes)",
        f"- drift: `{s['drift_base']}` replaced every {s['drift_every']} requests",
    ]
    if s["trainer_args"]:
        lines.append(f"- trainer flags: `{s['trainer_args']}`")
    if s["fit_args"]:
        lines.append(f"- `gati probes fit` flags: `--lookup-mode remote {s['fit_args']}`")
    if s["quick"]:
        lines.append("- **--quick**: smoke settings, not a measurement to quote")
    b = report.get("bundle")
    lines += ["", "## Systems", ""]
    for x in s["systems"]:
        lines.append(f"- `{x}`: {SYSTEMS[x].title}")
    lines += [
        "",
        "`plain` and `static` share one stack (Redis, cache service, inference with the "
        "exact-match cache off) started once: plain requests carry `gati.caches=false`. "
        "`exact` (inference with the exact-match cache only) and the online systems (plus "
        "Kafka-protocol broker and trainer) start fresh for every workload, so no workload "
        "inherits another's cache or window. The online systems serve with the exact-match "
        "cache off, so their figures are the learned caches' alone.",
    ]
    if b:
        lines += [
            "",
            f"Offline bundle: plan {b['plan'] or 'empty (no caches pay)'}; expected speedup on "
            f"its calibration rows {_f(b['speedup_calibration'], '{:.2f}x')}; calibration "
            f"{b['calibration']}; fitted in {b['fit_s']:.0f} s.",
        ]
    lines += ["", "## Summary", ""]
    lines += _table(SUMMARY_HEADERS, summary_rows(report))
    lines += [
        "",
        "hit rate: learned caches (exact-match for `exact`). worst 1000: lowest agreement over "
        "any 1000 consecutive requests (the whole stream when shorter). miss path: mean latency "
        "of the requests no cache answered, over the same requests served plain.",
        "",
        "## Against the goals and the paper",
        "",
    ]
    lines += [f"- {t}" for t in findings(report)]
    lines += [""]
    lines += _table(("goal", "workload", "system", "target", "measured", "met"), _goal_rows(report))
    rec = _recovery_rows(report)
    if rec:
        window = report["workloads"]["drift"]["recovery_window"]
        lines += [
            "",
            "## Drift: recovery after each change",
            "",
            "Recovery: time from the change until the hit rate over the trailing "
            f"{window} requests is back to "
            f"{analysis.RECOVERY_LEVEL:.0%} of the phase's steady state (its last third); the "
            f"resolution is {window} requests. Goal: within "
            f"{analysis.RECOVERY_LIMIT_S:g} s of traffic.",
            "",
        ]
        lines += _table(
            (
                "system",
                "change at",
                "hit rate before",
                "lowest after",
                "steady",
                "recovery",
                "requests",
                "",
            ),
            rec,
        )
    ex = _exit_rows(report)
    if ex:
        lines += [
            "",
            "## Where requests exit, and what each exit saves",
            "",
            "Over all workloads: the requests answered at each exit, their mean latency, and "
            "plain serving's mean latency for the very same requests (ratio > 1: answering "
            "there saved time; < 1: the lookups on the way cost more than the exit saved).",
            "",
        ]
        lines += _table(
            ("system", "exit", "requests", "share", "mean ms", "plain ms", "plain / system"), ex
        )
    tr = _trainer_rows(report)
    if tr:
        lines += ["", "## The online trainer", ""]
        lines += _table(
            (
                "workload",
                "system",
                "rounds",
                "round time",
                "published",
                "rejected",
                "failed",
                "versions served",
            ),
            tr,
        )
    if notes:
        lines += ["", "## Analysis", "", notes.strip()]
    lines += ["", "## Plots", ""]
    for role, name in images.items():
        lines += [f"### {role}", "", f"![{role}]({name})", ""]
    lines += [
        "## Caveats",
        "",
        "- The machine (2 cores) is shared with other work while this runs; absolute "
        "milliseconds move between runs, ratios measured side by side within one run are what "
        "count. Client, services, broker, Redis and trainer all share the same 2 cores, so "
        "the trainer's fitting competes with serving in the online systems.",
        "- Raw figures: `report.json`; every request of every run: `requests.npz`.",
    ]
    return "\n".join(lines) + "\n"
