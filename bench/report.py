"""`gati bench report`: plain serving, an exact-match cache, static early exits and gati
online, on the same request streams, in one run on one machine; Markdown, PNGs and JSON.

    gati bench report --arch resnet56 --weights W.th --data test.npz --report-dir docs/report

The dataset is split in two: probes are fitted offline on images `--fit-start..--fit-stop`
(`gati probes fit`), and every workload's stream is built over `--stream-start..--stream-stop`,
images the offline probes never saw. For each workload every system answers the identical
stream through real processes (`bench.systems`); the base model's own answer for every
request is computed in-process beforehand, so agreement is exact. Writes to --report-dir:
report.md, report.json (figures, command, commit), requests.npz (every request of every
run) and the plots. `--rerender` rebuilds report.md and the plots from those two files
(e.g. to add `--notes`) without measuring again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench import analysis, figures, markdown, plots
from bench.common import environment, table, write_json
from bench.latency import base_labels
from bench.load import interleaved
from bench.stack import fit_bundle_cli
from bench.systems import (
    DEFAULT_SYSTEMS,
    MODEL,
    SYSTEMS,
    StackOptions,
    bundle_info,
    enter_all,
    fresh_stack,
    shared_stack,
    trainer_summary,
    warm_up,
)
from gati.data import load_dataset
from gati.workloads import WORKLOADS, make_stream

QUICK = {  # --quick: a smoke run of every step in a couple of minutes (CI)
    "requests": 240,
    "workloads": "drift,repeats",
    "fit_stop": 600,
    "stream_start": 600,
    "stream_stop": 1600,
    "drift_every": 80,
    "drift_base": "instance-locality",  # class mixes change on 500-request windows only
    "fit_args": "--epochs 4 --variants linear,mlp --stage-reps 20",
    "trainer_args": "--min-records 100 --window-records 300 --retrain-every 100 "
    "--epochs 4 --warm-epochs 2 --variants linear",
    "warmup": 5,
}
WARMUP_IMAGES = 20
CLASS_WINDOW = 500  # class-locality draws its class mix per window of this many requests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", help="model architecture, e.g. resnet56 (required to measure)")
    parser.add_argument("--weights", help="model weights (required to measure)")
    parser.add_argument("--data", help="images: npz or CIFAR-10 archive (required to measure)")
    parser.add_argument(
        "--report-dir", required=True, help="directory for report.md, JSON and plots"
    )
    parser.add_argument("--requests", type=int, help="requests per workload (default: 4000)")
    parser.add_argument(
        "--workloads",
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default: %(default)s)",
    )
    parser.add_argument("--bundle", help="offline bundle directory (default: fit one first)")
    parser.add_argument("--fit-start", type=int, default=0, help="offline fitting images: start")
    parser.add_argument("--fit-stop", type=int, help="offline fitting images: stop (default: 5000)")
    parser.add_argument("--stream-start", type=int, help="stream images: start (default: 5000)")
    parser.add_argument("--stream-stop", type=int, help="stream images: stop (default: all)")
    parser.add_argument(
        "--fit-args",
        help="more flags for `gati probes fit`, one string (always: --lookup-mode remote)",
    )
    parser.add_argument(
        "--trainer-args", help="more flags for `gati serve trainer` (online), one string"
    )
    parser.add_argument("--drift-every", type=int, help="drift: requests per phase (default: 2000)")
    parser.add_argument(
        "--drift-base",
        choices=("class-locality", "instance-locality"),
        help="what drifts (default: class-locality)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the stream: request i goes out no earlier than i / RATE s (0: back to back)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of each inference service (0: torch's default)",
    )
    parser.add_argument(
        "--exact-cache-entries",
        type=int,
        default=10000,
        help="entries of the exact-match cache (the exact system)",
    )
    parser.add_argument("--seed", type=int, default=0, help="stream seed")
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"unmeasured requests before each run (default: {WARMUP_IMAGES})",
    )
    parser.add_argument("--log-dir", help="keep service logs and the fitted bundle here")
    parser.add_argument("--notes", help="Markdown file included in the report as its notes")
    parser.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="smoke settings for CI: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--rerender",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="rebuild report.md and plots from --report-dir's report.json and requests.npz",
    )


def _settings(args: argparse.Namespace) -> dict:
    """Flags with the --quick or normal defaults filled in (explicit flags always win)."""
    missing = [f"--{k}" for k in ("arch", "weights", "data") if not getattr(args, k)]
    if missing:
        raise SystemExit(f"gati bench report: {', '.join(missing)} required (or --rerender)")
    defaults = {
        "requests": 4000,
        "workloads": ",".join(WORKLOADS),
        "fit_stop": 5000,
        "stream_start": 5000,
        "stream_stop": None,
        "drift_every": 2000,
        "drift_base": "class-locality",
        "fit_args": "",
        "trainer_args": "",
        "warmup": WARMUP_IMAGES,
    }
    if args.quick:
        defaults.update(QUICK)
    s = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    s["workloads"] = [w for w in s["workloads"].split(",") if w]
    s["systems"] = [x for x in args.systems.split(",") if x]
    bad = [w for w in s["workloads"] if w not in WORKLOADS]
    if bad:
        raise SystemExit(f"unknown workloads {bad}; valid: {', '.join(WORKLOADS)}")
    bad = [x for x in s["systems"] if x not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown systems {bad}; valid: {', '.join(SYSTEMS)}")
    if "plain" not in s["systems"]:
        raise SystemExit("--systems must include plain: every ratio is against it")
    s["systems"] = [x for x in SYSTEMS if x in s["systems"]]  # fixed order
    if s["drift_base"] == "class-locality" and s["drift_every"] % CLASS_WINDOW:
        raise SystemExit(
            f"--drift-every must be a multiple of {CLASS_WINDOW} with class-locality "
            "(its class mix is drawn per window of that many requests)"
        )
    s.update(
        arch=args.arch,
        data=str(args.data),
        weights=str(args.weights),
        fit_start=args.fit_start,
        rate=args.rate,
        threads=args.threads,
        exact_entries=args.exact_cache_entries,
        seed=args.seed,
        quick=args.quick,
        bundle=args.bundle,
    )
    return s


def _command() -> str:
    argv = sys.argv[1:]
    if "report" not in argv:  # called as a function, not from the command line
        return ""
    return "gati " + shlex.join(argv)


def _git() -> dict[str, object]:
    def git(*a: str) -> str:
        try:
            out = subprocess.run(
                ["git", *a], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
            )
            return out.stdout.strip()
        except OSError:
            return ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status)}


# --- measuring ----------------------------------------------------------------------------------
def measure(s: dict, work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Run every system on every workload; (report figures, per-request arrays)."""
    t_start = time.perf_counter()
    x_fit, _ = load_dataset(s["data"], s["fit_start"], s["fit_stop"])
    x, y = load_dataset(s["data"], s["stream_start"], s["stream_stop"])
    stop = s["stream_start"] + len(x)
    if s["fit_start"] < stop and s["stream_start"] < s["fit_stop"]:
        raise SystemExit(
            f"fitting images {s['fit_start']}..{s['fit_stop']} overlap the stream's "
            f"{s['stream_start']}..{stop}: static probes must not have seen the stream"
        )
    warm = x_fit[: max(1, s["warmup"])]
    needs_bundle = any(x in ("static", "online") for x in s["systems"])
    bundle, fit_s = None, 0.0
    if s["bundle"]:
        bundle = Path(s["bundle"])
    elif needs_bundle:
        print(f"fitting the offline bundle on images {s['fit_start']}..{s['fit_stop']}")
        t = time.perf_counter()
        bundle = fit_bundle_cli(
            s["arch"],
            s["weights"],
            s["data"],
            s["fit_start"],
            s["fit_stop"],
            work / "bundle",
            "--model",
            MODEL,
            *shlex.split(s["fit_args"]),
        )
        fit_s = time.perf_counter() - t

    streams, base, truth = {}, {}, {}
    for name in tqdm(s["workloads"], desc="streams and base-model answers", unit="workload"):
        st = make_stream(
            name,
            x,
            y,
            s["requests"],
            seed=s["seed"],
            drift_every=s["drift_every"],
            drift_base=s["drift_base"],
        )
        streams[name] = st
        base[name] = base_labels(s["arch"], s["weights"], st.images)
        truth[name] = y[st.source]

    opts = StackOptions(
        s["arch"],
        s["weights"],
        bundle,
        s["threads"],
        s["exact_entries"],
        trainer_args=tuple(shlex.split(s["trainer_args"])),
    )
    logs = work / "logs"
    runs: dict[str, dict[str, analysis.Requests]] = {}
    trainer: dict[str, dict[str, dict]] = {w: {} for w in s["workloads"]}
    stack_s: dict[str, float] = {}
    shared_opts = opts if "static" in s["systems"] else replace(opts, bundle=None)
    t = time.perf_counter()
    with shared_stack(shared_opts, logs / "shared", warm[0]) as shared:
        stack_s["shared"] = time.perf_counter() - t
        for k, workload in enumerate(s["workloads"], 1):
            with contextlib.ExitStack() as running:
                t = time.perf_counter()
                own = [x for x in s["systems"] if not SYSTEMS[x].shared]
                print(f"[{workload}] starting fresh stacks for {', '.join(own)}", flush=True)
                fresh = {
                    x: fresh_stack(SYSTEMS[x], opts, logs / f"{workload}-{x}", warm[0]) for x in own
                }
                started = enter_all(running, fresh)
                stacks = {x: started.get(x, shared) for x in s["systems"]}
                stack_s[workload] = time.perf_counter() - t
                targets = {}
                for system, stack in stacks.items():
                    warm_up(stack, warm, SYSTEMS[system].caches)
                    channel = running.enter_context(stack.channel())
                    targets[system] = (channel, SYSTEMS[system].caches)
                measured = interleaved(
                    targets,
                    MODEL,
                    streams[workload].images,
                    desc=f"[{k}/{len(s['workloads'])}] {workload}",
                    rate=s["rate"],
                )
                runs[workload] = {x: analysis.Requests.from_run(r) for x, r in measured.items()}
            for system in s["systems"]:  # read after the stacks stopped: logs are complete
                if system.startswith("online"):
                    log = logs / f"{workload}-{system}" / "trainer.log"
                    trainer[workload][system] = trainer_summary(log)

    meta = {
        "settings": s,
        "bundle": bundle_info(bundle, fit_s),
        "trainer": trainer,
        "timings": {
            "total_s": time.perf_counter() - t_start,
            "fit_s": fit_s,
            "stack_start_s": stack_s,
        },
    }
    return meta, figures.pack(runs, streams, base, truth)


# --- writing ------------------------------------------------------------------------------------
def render(report: dict, arrays: dict[str, np.ndarray], out: Path, notes: str | None) -> Path:
    """Plots and report.md into `out`; returns the path of report.md."""
    work = report["workloads"]
    images: dict[str, str] = {}
    lat = {w: {x: arrays[f"{w}/{x}/latency_ms"] for x in e["systems"]} for w, e in work.items()}
    images["Latency CDF per workload"] = plots.latency_cdf(lat, out / "latency_cdf.png").name
    for w, e in work.items():
        sent = arrays[f"{w}/plain/sent_s"].astype(np.float64)  # one clock: systems interleave
        clock = (np.arange(len(sent), dtype=np.float64), np.maximum.accumulate(sent))
        series = {x: v["series"] for x, v in e["systems"].items()}
        path = plots.timeline(w, series, e["change_points"], clock, out / f"timeline-{w}.png")
        images[f"Hit rate and latency over time: {w}"] = path.name
    counts = {
        w: {x: v["exits"] for x, v in e["systems"].items() if x != "plain"} for w, e in work.items()
    }
    order = sorted(
        {k for c in counts.values() for v in c.values() for k in v}, key=markdown.exit_order
    )
    images["Exits per layer"] = plots.exits(counts, order, out / "exits.png").name
    path = out / "report.md"
    path.write_text(markdown.render(report, images, notes))
    return path


def _print_summary(report: dict) -> None:
    print()
    print(table(markdown.SUMMARY_HEADERS, markdown.summary_rows(report)))
    print()
    for line in markdown.findings(report):
        print("-", line.replace("`", "").replace("**", ""))


def run(args: argparse.Namespace) -> int:
    out = Path(args.report_dir)
    notes = Path(args.notes).read_text() if args.notes else None
    if args.rerender:
        previous = json.loads((out / "report.json").read_text())
        with np.load(out / "requests.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = {k: v for k, v in previous.items() if k not in ("workloads", "goals")}
    else:
        s = _settings(args)
        header = {"command": _command(), "git": _git(), "environment": environment()}
        if args.log_dir:
            measured, arrays = measure(s, Path(args.log_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="gati-report-") as work:
                measured, arrays = measure(s, Path(work))
        meta = {**header, **measured}
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "requests.npz", **arrays)
    report = {**meta, **figures.figures(meta, arrays)}
    write_json(out / "report.json", report)
    path = render(report, arrays, out, notes)
    _print_summary(report)
    print(f"\nreport: {path}")
    return 0
