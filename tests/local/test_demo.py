"""`gati demo` end to end on a short stream: the stack comes up, the stream runs, the stack
goes down, and the summary and report describe what was served.

The real demo streams 6000 requests so the trainer can publish; this smoke run is too short
for that, so it checks the plumbing and the figures' consistency, not a learning curve.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli.local import state as st

DEMO = (sys.executable, "-m", "cli.main", "demo", "--arch", "resnet20", "--requests", "240")
DEMO_BASELINE = ("--reference-every", "12")


def test_demo_runs_the_stack_and_reports(tmp_path: Path, assets: Path) -> None:
    run_dir = tmp_path / "demo"
    done = subprocess.run(
        [*DEMO, *DEMO_BASELINE, "--assets", str(assets), "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "hit rate" in done.stdout and "agreement" in done.stdout
    assert f"report: {run_dir / 'demo-report.md'}" in done.stdout

    report = json.loads((run_dir / "demo-report.json").read_text())
    assert report["requests"] == 240 and report["stream"]["n"] == 240
    assert report["caches_off"]["n"] == 20  # requests 0, 12, ..., 228 sent again, caches off
    assert report["caches_on_same_requests"]["n"] == 20
    assert report["windows"][0]["speedup"] > 0
    assert [w["requests"] for w in report["windows"]] == ["0-240"]
    # no bundle can be published this early: every answer is the base model's own
    assert report["hit_rate"] == 0.0 and report["agreement"] == 1.0
    assert abs(report["top1"] - report["base_top1"]) < 1e-9
    assert "| 0-240 |" in (run_dir / "demo-report.md").read_text()

    assert st.load(run_dir) is None  # `gati down` ran: the stack's record is gone with it
