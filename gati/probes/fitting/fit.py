"""fit_bundle: records (reduced activations + base outputs) -> a calibrated, optimised bundle.

The one entry point both the offline CLI and the online trainer call:
1. split the window (`gati.probes.fitting.splits`): probe training / selector fitting / thresholds;
2. train every candidate (cut, variant) by distillation, warm-started from `previous`;
3. per candidate: a novelty memory of the training rows, a selector without the
   previous-cut features, its coverage at the agreement target, its measured lookup cost;
4. the optimizer picks cuts and variants; the plan is then refined on the selector rows
   (learned selectors along the plan, with previous-cut features; probes that do not pay
   are pruned one at a time);
5. thresholds for the whole cascade are calibrated on the threshold rows alone, which no
   earlier step looked at (the guarantee mode's statement needs that);
6. the live memory's rule per active layer, from replaying every row in stream order
   (`gati.probes.fitting.live_calibration`);
7. the bundle: active probes with selectors, thresholds and memories; optionally every
   candidate probe (for analysis, e.g. the oracle over all cuts).
Records carry "pool4" for every cut; coarser reductions are derived exactly with `refine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from gati.probes.fitting.calibration import first_exit
from gati.probes.fitting.candidates import Evidence, ProbeCandidate, SelectorRows
from gati.probes.fitting.costs import CostModel, measure_ms
from gati.probes.fitting.distill import train_stack
from gati.probes.fitting.entries import layer_entry
from gati.probes.fitting.fit_config import FitConfig
from gati.probes.fitting.live_calibration import calibrate_live
from gati.probes.fitting.packaging import assemble
from gati.probes.fitting.planning import calibrate_plan, choose, plan_scores, plan_selectors
from gati.probes.fitting.rows import SOURCE
from gati.probes.fitting.selection import fit_selector, selector_options, uses_memory
from gati.probes.fitting.splits import Split, make_split
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.features import (
    NoveltyMemory,
    memory_reduction,
    probe_output,
)
from gati.probes.serving.reductions import refine
from gati.probes.serving.runtime import LayerProbe
from gati.probes.serving.selectors import Selector
from gati.probes.serving.variants import TRAINED, Predictor, input_stats, spec


def fit_bundle(
    acts: Mapping[str, np.ndarray],
    base_logits: np.ndarray,
    *,
    channels: Mapping[str, int],
    cost: CostModel,
    model_id: str,
    arch: str,
    fingerprint: str,
    groups: np.ndarray | None = None,
    calibration_rows: np.ndarray | None = None,
    previous: Bundle | None = None,
    agreement_target: float | None = None,
    config: FitConfig | None = None,
    lookup_ms: Mapping[str, float] | None = None,
    version: int = 1,
    keep_candidates: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Bundle:
    """Fit, calibrate and optimise probes on one window of records.

    acts: cut -> [N, C*16] pool4 activations (float16 or float32), rows in time order;
    base_logits [N, K]; channels: cut -> C; groups [N]: image / neighbourhood ids (errors
    within a group are correlated, so calibration counts groups, not requests);
    calibration_rows: explicit calibration rows (else split inside, see `splits`);
    lookup_ms: "cut:variant" -> lookup cost, overriding measurement (tests, remote costs);
    keep_candidates: ship every trained probe too, inactive (for analysis, and the trainer's
    warm starts).
    """
    cfg = config or FitConfig()
    if agreement_target is not None:
        cfg = replace(cfg, agreement_target=agreement_target)
    say = log or (lambda _msg: None)
    z = np.asarray(base_logits, dtype=np.float32)
    n, k = z.shape
    layers = [c for c in cost.cut_names if c in acts and (cfg.layers is None or c in cfg.layers)]
    if cfg.layers is not None and set(cfg.layers) - set(layers):
        raise ValueError(f"no records for candidate cuts {sorted(set(cfg.layers) - set(layers))}")
    for layer in layers:
        if acts[layer].shape != (n, channels[layer] * 16):
            raise ValueError(
                f"{layer}: expected pool4 records [{n}, {channels[layer] * 16}], "
                f"got {list(acts[layer].shape)}"
            )
    g = np.arange(n) if groups is None else np.asarray(groups)
    split = make_split(
        n,
        groups,
        new_fraction=cfg.new_fraction,
        calib_fraction=cfg.calib_fraction,
        select_fraction=cfg.select_fraction,
        seed=cfg.seed,
        calibration_rows=calibration_rows,
    )
    say(f"split {split.sizes()} over {len(np.unique(g))} groups")
    base_label = z.argmax(axis=1)
    trained = _train_candidates(acts, z, layers, channels, split, cfg, previous, progress)
    w_sel = SelectorRows.of(
        g[split.select], split.novel[split.select], cfg.selector_folds, cfg.seed
    )
    memo: dict[tuple[str, str], _Novelty] = {}
    options = selector_options(cfg, w_sel)
    cands: list[ProbeCandidate] = []
    for base in tqdm(trained, desc="selectors", disable=not progress, leave=False):
        _attach_memory_and_parts(base, acts, base_label, split, cfg, memo)
        for option in options:  # each selector option is its own candidate for the optimizer
            sel, cov, score = fit_selector(cfg, k, base.sel, None, w_sel, option)
            c = replace(base, option=option, pre_selector=sel, coverage=cov, sel_score=score)
            c.lookup_ms = (
                float(lookup_ms[base.key])
                if lookup_ms is not None and base.key in lookup_ms
                else _measure_lookup(c, acts, split, cfg)
            )
            cands.append(c)
    chosen = choose(cands, cfg, cost, k, g[split.select], w_sel, say)
    selectors = plan_selectors(chosen, cfg, k, w_sel)
    calib = calibrate_plan(chosen, selectors, cfg, cost, "thr", g[split.threshold])
    scores, _ = plan_scores(chosen, selectors, "thr", len(split.threshold))
    exits = first_exit(scores, np.array(calib.thresholds))
    lat = cost.latencies([c.layer for c in chosen], [c.lookup_ms for c in chosen], exits)
    expected = float(lat.mean()) if chosen else cost.full_ms
    if not chosen or calib.hit_rate == 0 or expected >= cost.full_ms * (1 - cfg.plan_min_gain):
        say(f"no caches pay (expected {expected:.3f} ms vs {cost.full_ms:.3f} ms)")
        chosen, selectors = [], []
        calib = calibrate_plan([], [], cfg, cost, "thr", g[split.threshold])
        expected, exits = cost.full_ms, np.full(len(split.threshold), -1)
    if cfg.memory_rows == "window" and chosen:
        chosen = _window_memories(chosen, selectors, acts, base_label, cfg)
    live = (
        calibrate_live(chosen, acts, SOURCE, base_label, split.train, groups, cfg, say)
        if cfg.live
        else {}
    )
    return assemble(
        chosen,
        selectors,
        calib,
        cands,
        cfg,
        cost,
        split,
        exits,
        expected,
        model_id=model_id,
        arch=arch,
        fingerprint=fingerprint,
        version=version,
        num_classes=k,
        live=live,
        keep_candidates=keep_candidates,
    )


# ---- training ---------------------------------------------------------------------------------
def _previous_roles(previous: Bundle | None) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    if previous is None:
        return out
    for entry in [*previous.candidates, *previous.layers]:
        out[f"{entry['layer']}:{entry['variant']}"] = previous.layer_tensors(entry)
    return out


def _train_candidates(
    acts: Mapping[str, np.ndarray],
    z: np.ndarray,
    layers: Sequence[str],
    channels: Mapping[str, int],
    split: Split,
    cfg: FitConfig,
    previous: Bundle | None,
    progress: bool,
) -> list[ProbeCandidate]:
    prev = _previous_roles(previous)
    stacks: dict[int, list[str]] = {}
    for layer in layers:  # cuts of equal width train together
        stacks.setdefault(channels[layer], []).append(layer)
    trained: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    to_train = [v for v in cfg.variants if v in TRAINED]
    total = sum(len(stacks) for _ in to_train)
    bar = tqdm(total=total * cfg.epochs, desc="distil", disable=not progress, leave=False)
    if "knn" in cfg.variants:  # nothing to train: the recent requests themselves vote
        base_label = z.argmax(axis=1)
        for layer in layers:
            memory = NoveltyMemory.build(
                acts[layer][split.train],
                base_label[split.train],
                channels=channels[layer],
                source=SOURCE,
                reduction=spec("knn").reduction,
                k=cfg.knn,
                size=cfg.memory_size,
            )
            meta = np.array([memory.k, z.shape[1]], np.int32)
            trained[f"{layer}:knn"] = ({**memory.tensors(), "knn_meta": meta}, channels[layer])
    for variant in to_train:
        red = spec(variant).reduction
        for ch, stack_layers in stacks.items():
            xs, stats, init = [], [], []
            for layer in stack_layers:
                x = refine(acts[layer][split.train], ch, SOURCE, red)  # [Ntr, D]
                old = prev.get(f"{layer}:{variant}")
                if old is not None and old["in_mu"].shape == (x.shape[1],):
                    mu, scale = old["in_mu"], old["in_scale"]  # keep the old scaling
                else:
                    mu, scale = input_stats(x, variant, ch)
                    old = None
                stats.append((mu, scale))
                init.append(old)
                xs.append((x - mu) * scale)
            roles = train_stack(
                variant,
                np.stack(xs, axis=1),
                z[split.train],
                ch,
                cfg,
                init,
                progress=lambda _e: bar.update(1),
            )
            bar.update(
                max(0, cfg.epochs - cfg.warm_epochs) if all(r is not None for r in init) else 0
            )
            for layer, r, (mu, scale) in zip(stack_layers, roles, stats, strict=True):
                trained[f"{layer}:{variant}"] = ({**r, "in_mu": mu, "in_scale": scale}, ch)
    bar.close()
    out = []
    for layer in layers:
        for variant in cfg.variants:
            roles, ch = trained[f"{layer}:{variant}"]
            out.append(
                ProbeCandidate(
                    layer,
                    variant,
                    ch,
                    roles,
                    Predictor(variant, ch, roles),
                    None,
                    sel=None,
                    thr=None,
                )
            )  # type: ignore[arg-type]
    return out


# ---- per-candidate evidence -------------------------------------------------------------------
_Novelty = tuple[NoveltyMemory, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]


def _attach_memory_and_parts(
    c: ProbeCandidate,
    acts: Mapping[str, np.ndarray],
    base_label: np.ndarray,
    split: Split,
    cfg: FitConfig,
    memo: dict[tuple[str, str], _Novelty],
) -> None:
    """Probe outputs and novelty answers on the selector and threshold rows. Variants of one
    cut reading the same memory grid share one memory and its answers (`memo`)."""
    red = spec(c.variant).reduction
    rows = {"sel": split.select, "thr": split.threshold}
    nov: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    if cfg.uses_novelty:
        mred = memory_reduction(red, cfg.memory_reduction)
        if (c.layer, mred) not in memo:
            memory = NoveltyMemory.build(
                acts[c.layer][split.train],
                base_label[split.train],
                channels=c.channels,
                source=SOURCE,
                reduction=mred,
                k=cfg.knn,
                size=cfg.memory_size,
            )
            answers = {
                part: memory.query(np.asarray(acts[c.layer][r], np.float32), SOURCE)
                for part, r in rows.items()
            }
            memo[(c.layer, mred)] = (memory, answers)
        c.memory, nov = memo[(c.layer, mred)]
    for part, r in rows.items():
        x = refine(acts[c.layer][r], c.channels, SOURCE, red)
        out = probe_output(c.predictor(x))
        answers = nov[part] if nov else None
        if c.variant == "knn":  # served from its own memory, so calibrated on it too
            c.memory, answers = c.predictor.memory, c.predictor.last_query
        setattr(c, part, Evidence(out, answers, out.label == base_label[r]))


def _measure_lookup(
    c: ProbeCandidate, acts: Mapping[str, np.ndarray], split: Split, cfg: FitConfig
) -> float:
    """Low-quantile time of one row through predictor, memory, features and selector."""
    memory = c.memory if uses_memory(c.pre_selector) else None
    entry, tensors = layer_entry(
        c.layer,
        c.variant,
        c.channels,
        c.roles,
        prefix="",
        selector=c.pre_selector,
        memory=memory,
        threshold=0.5,
    )
    probe = LayerProbe(entry, tensors)
    x = refine(acts[c.layer][split.threshold[:1]], c.channels, SOURCE, probe.reduction)
    return measure_ms(lambda: probe.score_one(x, 3, 0.9), reps=cfg.lookup_reps)


def _window_memories(
    chosen: Sequence[ProbeCandidate],
    selectors: Sequence[Selector],
    acts: Mapping[str, np.ndarray],
    base_label: np.ndarray,
    cfg: FitConfig,
) -> list[ProbeCandidate]:
    """The plan's memories rebuilt from every row of the window (standardised as calibrated).

    Calibration placed new-input stand-ins outside the memory; at serving time the images
    held out for that are recurring ones, and leaving them out of the memory would keep them
    unfamiliar (no hits) for a whole bundle's lifetime.
    """
    out = []
    for c, sel in zip(chosen, selectors, strict=True):
        if c.memory is None or not (c.variant == "knn" or uses_memory(sel)):
            out.append(c)
            continue
        memory = NoveltyMemory.build(
            acts[c.layer],
            base_label,
            channels=c.channels,
            source=SOURCE,
            reduction=c.memory.reduction,
            k=cfg.knn,
            size=cfg.memory_size,
            like=c.memory,
        )
        roles = c.roles
        if c.variant == "knn":
            roles = {**c.roles, **memory.tensors()}
        out.append(replace(c, memory=memory, roles=roles))
    return out
