"""The systems `gati bench report` compares, each one way of starting the same services.

- `plain`: the inference service with learned caches off and no exact-match cache;
- `exact`: the same with only the exact-match response cache (input hash, like Triton's);
- `static`: learned caches from a bundle fitted once offline, published once, never updated;
- `online`: gati as deployed: records on Kafka, the trainer retraining and publishing,
  starting from the offline bundle;
- `online-cold`: the same loop starting from no bundle at all (the bootstrap of issue 5).

`plain` and `static` are one stack (Redis, cache service, inference with the exact-match cache
off) started once for the whole run: plain requests carry `gati.caches=false`, so the
miss-path overhead is measured against the very process that serves the caches. The exact
cache and the online loop keep state that would leak from one workload into the next, so
their stacks start fresh for every workload. Also here: what the systems held, for the report
(the offline bundle's plan, the online trainer's rounds from its log).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.stack import Stack, local_stack, publish, request, wait_for_bundle
from gati.api import grpc_service_pb2_grpc as pb_grpc

MODEL = "bench"


@dataclass(frozen=True)
class System:
    name: str
    title: str  # how the report names it
    caches: bool  # request parameter gati.caches
    shared: bool  # served by the stack started once for the run (plain, static)


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("plain", "plain serving (caches off)", False, True),
        System("exact", "exact-match response cache", True, False),  # no cache service
        System("static", "static early exits (offline probes)", True, True),
        System("online", "gati online (from the offline bundle)", True, False),
        System("online-cold", "gati online (from no bundle)", True, False),
    )
}
DEFAULT_SYSTEMS = ("plain", "exact", "static", "online")


@dataclass(frozen=True)
class StackOptions:
    arch: str
    weights: str
    bundle: Path | None  # the offline bundle (static, online)
    threads: int  # torch intra-op threads of the inference service (0: torch's default)
    exact_entries: int  # size of the exact-match cache of the `exact` system
    trainer_args: tuple[str, ...] = ()
    inference_args: tuple[str, ...] = ()  # extra flags for every inference service

    def inference_flags(self, exact_entries: int = 0) -> tuple[str, ...]:
        threads = ("--threads", str(self.threads))
        return ("--exact-cache-entries", str(exact_entries), *threads, *self.inference_args)


@contextlib.contextmanager
def shared_stack(opts: StackOptions, log_dir: Path, probe: np.ndarray) -> Iterator[Stack]:
    """Redis + cache service + inference (exact cache off) with the offline bundle in use."""
    with local_stack(
        log_dir, MODEL, opts.arch, opts.weights, inference_args=opts.inference_flags()
    ) as stack:
        if opts.bundle is not None:
            version = publish(opts.bundle, stack.redis_url, MODEL)  # type: ignore[arg-type]
            wait_for_bundle(stack, MODEL, probe, version, timeout=60)
        yield stack


@contextlib.contextmanager
def fresh_stack(
    system: System, opts: StackOptions, log_dir: Path, probe: np.ndarray
) -> Iterator[Stack]:
    """A stack of its own for `exact`, `online` or `online-cold`, stopped after its run."""
    if system.name == "exact":
        with local_stack(
            log_dir,
            MODEL,
            opts.arch,
            opts.weights,
            cache=False,
            inference_args=opts.inference_flags(opts.exact_entries),
        ) as stack:
            yield stack
        return
    if system.name not in ("online", "online-cold"):
        raise ValueError(f"{system.name} runs on the shared stack")
    with local_stack(
        log_dir,
        MODEL,
        opts.arch,
        opts.weights,
        trainer=True,
        inference_args=opts.inference_flags(),
        trainer_args=opts.trainer_args,
    ) as stack:
        if system.name == "online" and opts.bundle is not None:
            version = publish(opts.bundle, stack.redis_url, MODEL)  # type: ignore[arg-type]
            wait_for_bundle(stack, MODEL, probe, version, timeout=60)
        yield stack


def warm_up(stack: Stack, images: np.ndarray, caches: bool) -> None:
    """A few requests the measurement does not count (connections, allocator, caches of torch)."""
    with stack.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for image in images:
            stub.ModelInfer(request(MODEL, image[None], caches=caches), timeout=60)


def enter_all(
    running: contextlib.ExitStack, stacks: dict[str, contextlib.AbstractContextManager[Stack]]
) -> dict[str, Stack]:
    """Enter several stacks at once (their processes start and load in parallel); each is
    stopped by `running`. If one fails to start, the others are stopped too."""
    entered: dict[str, Stack] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def enter(name: str, cm: contextlib.AbstractContextManager[Stack]) -> None:
        try:
            stack = cm.__enter__()
        except BaseException as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            entered[name] = stack
            running.push(cm)  # its __exit__ stops the processes

    threads = [threading.Thread(target=enter, args=item) for item in stacks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return {name: entered[name] for name in stacks}


def bundle_info(bundle: Path | None, fit_s: float) -> dict | None:
    """What the offline bundle holds: plan, calibration, expected speedup (from its manifest)."""
    if bundle is None:
        return None
    manifest = json.loads((bundle / "manifest.json").read_text())
    fit = manifest.get("fit", {})
    return {
        "path": str(bundle),
        "fit_s": fit_s,
        "version": manifest.get("version"),
        "plan": [f"{e['layer']}:{e['variant']}" for e in manifest.get("layers", [])],
        "speedup_calibration": fit.get("speedup_calibration"),
        "calibration": {
            k: fit.get("calibration", {}).get(k)
            for k in ("mode", "agreement", "hit_rate", "units", "requests")
        },
    }


ROUND = re.compile(r"round took ([0-9.]+)s on (\d+) records")
DECISION = re.compile(r"(?:candidate not published|published \S+ v\d+): (.*)")


def trainer_summary(log: Path) -> dict[str, object]:
    """Rounds, their duration and what was published, from the trainer's log."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return {"rounds": 0}
    seconds = [float(m.group(1)) for m in ROUND.finditer(text)]
    return {
        "rounds": len(seconds),
        "round_s_mean": float(np.mean(seconds)) if seconds else None,
        "round_s_max": max(seconds) if seconds else None,
        "published": len(re.findall(r"published \S+ v\d+", text)),
        "rejected": text.count("candidate not published"),
        "failed": text.count("round failed"),
        "decisions": DECISION.findall(text)[-8:],  # why candidates went out or not (last 8)
    }
