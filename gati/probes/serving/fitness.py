"""Fitness of a verified bundle: intact is not enough, it must also make sense to serve.

`Bundle.verify` proves a bundle is what its publisher sealed. A publisher with a bug (or one
that reseals by hand) can still seal nonsense that builds a runtime: a negative threshold
(every lookup hits), a probe sized for 32 channels at a cut of 16 (every lookup fails on
shape), a NaN weight (every answer is garbage). `fit_to_serve` refuses those before anything
is installed, with a `FitnessError` that lists every problem found.

What a probe's width must fit: its entry's `channels` x grid(reduction)^2 (`input_dim`), and
the cut's channel count where the model is described. The description comes from the
manifest's `cuts` ([{name, channels}] in stage order, recorded by the fit) and, for a built-in
architecture, from the architecture itself; a manifest that contradicts a built-in one is
unfit. With neither (a user's model, an older bundle) only the entry's own consistency is
checked.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from gati.probes.serving.bundle import Bundle, BundleError
from gati.probes.serving.reductions import REDUCTIONS, grid
from gati.probes.serving.runtime import ProbeRuntime
from gati.probes.serving.variants import VARIANTS, spec

MAX_PROBLEMS = 8  # listed in one refusal; the rest are counted
# Optional per-entry report fields and the range each must lie in (None: not reported).
FRACTIONS = (
    "coverage_alone",
    "hit_rate_calibration",
    "agreement_among_hits_calibration",
    "agreement_calibration",
)
DURATIONS = ("lookup_cost_ms", "time_to_cut_ms")
COUNTS = ("calibration_size", "param_bytes", "memory_bytes")
# The fit report's calibration: fields in [0, 1] (None allowed where ltt/empirical omit one).
CALIBRATION_FRACTIONS = ("target", "agreement", "hit_rate", "delta", "p_value")


class FitnessError(BundleError):
    """A bundle is intact but unfit to serve; the message lists what is wrong."""


def fit_to_serve(bundle: Bundle) -> ProbeRuntime:
    """The runtime of a bundle that passed every fitness check (FitnessError otherwise)."""
    _raise_if(list(bundle_problems(bundle)))
    runtime = ProbeRuntime(bundle)
    _raise_if(list(runtime_problems(runtime)))
    return runtime


def _raise_if(problems: list[str]) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    raise FitnessError(f"unfit bundle: {shown}" + (f" (and {more} more)" if more > 0 else ""))


def bundle_problems(bundle: Bundle) -> Iterator[str]:
    """Every fitness problem of the manifest and tensors, as one sentence each."""
    m = bundle.manifest
    num_classes = m.get("num_classes", 10)  # the runtime's default when a manifest omits it
    if not _is_int(num_classes) or num_classes < 2:
        yield f"num_classes must be an int >= 2, got {num_classes!r}"
        num_classes = None
    if m.get("agreement_target") is not None and not _in_unit(m["agreement_target"]):
        yield f"agreement_target must be in [0, 1], got {m['agreement_target']!r}"
    cuts, problems = model_cuts(m)
    yield from problems
    for entry in [*bundle.layers, *bundle.candidates]:
        yield from _entry_problems(entry, cuts)
        where = f"layer {entry.get('layer')!r} ({entry.get('variant')})"
        yield from (f"{where}: {p}" for p in _live_problems(entry, bundle.layer_tensors(entry)))
    yield from _order_problems(bundle, cuts)
    yield from _calibration_problems(m.get("fit"))
    yield from _tensor_problems(bundle.tensors, num_classes)


def runtime_problems(runtime: ProbeRuntime) -> Iterator[str]:
    """Problems only a built probe shows: its class count must be the bundle's."""
    for layer, _ in runtime.layers:
        k = runtime.probe(layer).predictor.num_classes
        if k != runtime.num_classes:
            yield f"layer {layer!r}: probe answers {k} classes, bundle says {runtime.num_classes}"


# ---- the model's cuts ---------------------------------------------------------------------
def model_cuts(manifest: Mapping[str, Any]) -> tuple[dict[str, int | None] | None, list[str]]:
    """(cut -> channels in stage order, or None when the model is not described; problems)."""
    recorded, problems = _recorded_cuts(manifest.get("cuts"))
    model = manifest.get("model")
    arch = model.get("arch") if isinstance(model, Mapping) else None
    known = builtin_cuts(arch) if isinstance(arch, str) else None
    if known is None:
        return recorded, problems
    if recorded is not None:
        for name, channels in recorded.items():
            if name not in known:
                problems.append(f"cuts: {name!r} is not a cut of {arch}")
            elif channels is not None and channels != known[name]:
                problems.append(
                    f"cuts: {name!r} of {arch} has {known[name]} channels, manifest says {channels}"
                )
    return dict(known), problems


def _recorded_cuts(raw: Any) -> tuple[dict[str, int | None] | None, list[str]]:
    if raw is None:
        return None, []
    if not isinstance(raw, list):
        return None, [f"cuts must be a list of {{name, channels}}, got {type(raw).__name__}"]
    cuts: dict[str, int | None] = {}
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        channels = item.get("channels") if isinstance(item, dict) else None
        if not isinstance(name, str) or name in cuts:
            return None, [f"cuts[{i}] must have a distinct string name, got {item!r}"]
        if channels is not None and (not _is_int(channels) or channels < 1):
            return None, [f"cuts[{i}] ({name!r}): channels must be an int >= 1, got {channels!r}"]
        cuts[name] = channels
    return cuts, []


@functools.lru_cache(maxsize=8)
def builtin_cuts(arch: str) -> Mapping[str, int] | None:
    """Cut -> channels of a built-in architecture (one forward of a fresh model, cached);
    None for any other name. A user's model is never imported here: bundles are data."""
    from gati.models.resnet_cifar import DEPTHS, build_resnet  # torch modules: only if needed

    if arch not in DEPTHS:
        return None
    return {name: int(shape[0]) for name, shape in build_resnet(arch).cut_shapes().items()}


# ---- one probe ----------------------------------------------------------------------------
def _entry_problems(
    entry: Mapping[str, Any], cuts: Mapping[str, int | None] | None
) -> Iterator[str]:
    where = f"layer {entry.get('layer')!r} ({entry.get('variant')})"
    yield from (f"{where}: {p}" for p in _width_problems(entry, cuts))
    threshold = entry.get("threshold", 1.0)
    if not _in_unit(threshold):
        yield f"{where}: threshold must be a finite number in [0, 1], got {threshold!r}"
    for key in FRACTIONS:
        if entry.get(key) is not None and not _in_unit(entry[key]):
            yield f"{where}: {key} must be in [0, 1], got {entry[key]!r}"
    for key in DURATIONS:
        if entry.get(key) is not None and not _non_negative(entry[key]):
            yield f"{where}: {key} must be a finite number >= 0, got {entry[key]!r}"
    for key in COUNTS:
        if entry.get(key) is not None and not (_is_int(entry[key]) and entry[key] >= 0):
            yield f"{where}: {key} must be an int >= 0, got {entry[key]!r}"
    yield from (f"{where}: {p}" for p in _selector_problems(entry))


def _width_problems(
    entry: Mapping[str, Any], cuts: Mapping[str, int | None] | None
) -> Iterator[str]:
    """The probe reads channels x grid^2 values of its cut, and the cut has that many channels."""
    variant, reduction = entry.get("variant"), entry.get("reduction")
    channels, input_dim = entry.get("channels"), entry.get("input_dim")
    if variant not in VARIANTS:
        yield f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}"
        return
    if reduction != spec(variant).reduction:
        yield f"variant {variant} reads {spec(variant).reduction}, entry says {reduction!r}"
        return
    if not _is_int(channels) or channels < 1:
        yield f"channels must be an int >= 1, got {channels!r}"
        return
    if input_dim != channels * grid(reduction) ** 2:
        yield (
            f"input_dim {input_dim!r} does not fit {channels} channels x "
            f"{grid(reduction)}^2 ({reduction}) = {channels * grid(reduction) ** 2}"
        )
    if cuts is None:
        return
    layer = entry.get("layer")
    if layer not in cuts:
        yield f"the model has no cut {layer!r}; cuts: {', '.join(cuts)}"
    elif cuts[layer] is not None and cuts[layer] != channels:
        yield f"probe reads {channels} channels, the cut has {cuts[layer]}"


def _selector_problems(entry: Mapping[str, Any]) -> Iterator[str]:
    selector, novelty = entry.get("selector"), entry.get("novelty")
    gate = selector.get("gate") if isinstance(selector, dict) else None
    if gate is not None and not _finite(gate):
        yield f"selector gate must be a finite number, got {gate!r}"
    if isinstance(novelty, dict):
        if not (_is_int(novelty.get("k")) and novelty["k"] >= 1):
            yield f"novelty k must be an int >= 1, got {novelty.get('k')!r}"
        if not (_is_int(novelty.get("size")) and novelty["size"] >= 0):
            yield f"novelty size must be an int >= 0, got {novelty.get('size')!r}"
        if novelty.get("reduction") not in REDUCTIONS:
            yield f"novelty reduction {novelty.get('reduction')!r} is unknown"


def _live_problems(entry: Mapping[str, Any], roles: Mapping[str, np.ndarray]) -> Iterator[str]:
    """The live memory's rule: keys no finer than what a lookup carries (the probe's input),
    k >= 1, a finite radius >= 0 (a negative or NaN one would answer everything or nothing
    by accident), and standardisation tensors of the keys' width."""
    live = entry.get("live")
    if live is None:
        return
    if not isinstance(live, dict):
        yield f"live must be an object {{reduction, k, radius}}, got {live!r}"
        return
    reduction, probe_reduction = live.get("reduction"), entry.get("reduction")
    if reduction not in REDUCTIONS:
        yield f"live reduction {reduction!r} is unknown; valid: {', '.join(REDUCTIONS)}"
        reduction = None
    elif probe_reduction in REDUCTIONS and grid(reduction) > grid(probe_reduction):
        yield f"live reduction {reduction} is finer than the probe's input {probe_reduction}"
    if not (_is_int(live.get("k")) and live["k"] >= 1):
        yield f"live k must be an int >= 1, got {live.get('k')!r}"
    if not _non_negative(live.get("radius")):
        yield f"live radius must be a finite number >= 0, got {live.get('radius')!r}"
    channels = entry.get("channels")
    dim = channels * grid(reduction) ** 2 if reduction and _is_int(channels) else None
    for name in ("live_mu", "live_scale"):
        t = roles.get(name)
        if t is None:
            yield f"live memory tensor {name!r} is missing"
        elif dim is not None and t.shape != (dim,):
            yield f"{name} has shape {list(t.shape)}, the keys have {dim} values"
        elif not np.isfinite(t).all() or (name == "live_scale" and not (t > 0).all()):
            yield f"{name} must be finite" + (" and > 0" if name == "live_scale" else "")


def _order_problems(bundle: Bundle, cuts: Mapping[str, int | None] | None) -> Iterator[str]:
    """The plan runs in stage order: the inference service and the selector's previous-cut
    features both assume it."""
    if cuts is None:
        return
    stage = {name: i for i, name in enumerate(cuts)}
    plan = [layer for layer, _ in bundle.plan if layer in stage]
    if plan != sorted(plan, key=stage.__getitem__):
        yield f"plan layers {plan} are not in stage order"


# ---- the fit report and the tensors -----------------------------------------------------
def _calibration_problems(fit: Any) -> Iterator[str]:
    calibration = fit.get("calibration") if isinstance(fit, dict) else None
    if not isinstance(calibration, dict):
        return
    for key in CALIBRATION_FRACTIONS:
        value = calibration.get(key)
        if value is not None and not _in_unit(value):
            yield f"fit calibration {key} must be in [0, 1], got {value!r}"
    thresholds = calibration.get("thresholds", [])
    if not isinstance(thresholds, list | tuple) or not all(_in_unit(t) for t in thresholds):
        yield f"fit calibration thresholds must all be in [0, 1], got {thresholds!r}"
    lam = calibration.get("lam")
    if lam is not None and not _non_negative(lam):
        yield f"fit calibration lam must be a finite number >= 0, got {lam!r}"


def _tensor_problems(tensors: Mapping[str, np.ndarray], num_classes: int | None) -> Iterator[str]:
    """No NaN or inf anywhere; remembered labels and the knn class count fit the bundle."""
    for name, t in sorted(tensors.items()):
        if t.dtype.kind == "f":
            bad = int(t.size - np.count_nonzero(np.isfinite(t)))
            if bad:
                yield f"tensor {name!r} holds {bad} NaN or inf values"
        if num_classes is None:
            continue
        if name.endswith("mem_labels") and t.size and (t.min() < 0 or t.max() >= num_classes):
            yield f"tensor {name!r} holds labels outside [0, {num_classes})"
        if name.endswith("knn_meta"):
            meta = t.reshape(-1)
            if meta.size < 2 or meta[0] < 1 or meta[1] != num_classes:
                yield f"tensor {name!r} must be [k >= 1, {num_classes}], got {meta.tolist()}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _in_unit(value: Any) -> bool:
    return _finite(value) and 0.0 <= value <= 1.0


def _non_negative(value: Any) -> bool:
    return _finite(value) and value >= 0.0
