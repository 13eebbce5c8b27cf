"""Shared pieces of the benchmarks: percentiles, tables, JSON output, a served inference process."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from launch.ports import free_port
from launch.processes import start_healthy
from launch.topology import Inference, Model


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p99 in milliseconds."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000
    return {
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "n": len(ms),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def environment() -> dict[str, object]:
    """What a figure was measured on, stored beside it."""
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: str | Path | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


@contextmanager
def served_inference(
    log_dir: Path, model: str, arch: str, weights: str, *extra: str, timeout: float = 180
) -> Iterator[int]:
    """`gati serve inference` in its own process; yields its gRPC port, stops it after."""
    service = Inference(port=free_port(), model=Model(model, arch, weights), extra=extra)
    proc = start_healthy(service, log_dir / f"inference-{service.port}.log", timeout)
    try:
        yield service.port
    except Exception:
        print(proc.log_tail())
        raise
    finally:
        proc.stop()
