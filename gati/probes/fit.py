"""fit_bundle: records (reduced activations + base outputs) -> a calibrated, optimised bundle.

The one entry point both the offline CLI and the online trainer call:
1. split the window (`gati.probes.splits`): probe training / selector fitting / thresholds;
2. train every candidate (cut, variant) by distillation, warm-started from `previous`;
3. per candidate: a novelty memory of the training rows, a selector without the
   previous-cut features, its coverage at the agreement target, its measured lookup cost;
4. the optimizer picks cuts and variants; the plan is then refined on the selector rows
   (learned selectors along the plan, with previous-cut features; probes that do not pay
   are pruned one at a time);
5. thresholds for the whole cascade are calibrated on the threshold rows alone, which no
   earlier step looked at (the guarantee mode's statement needs that);
6. the bundle: active probes with selectors, thresholds and memories; optionally every
   candidate probe (for analysis, e.g. the oracle over all cuts).
Records carry "pool4" for every cut; coarser reductions are derived exactly with `refine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from gati.probes.bundle import Bundle
from gati.probes.calibration import (
    MODES as CALIBRATION_MODES,
)
from gati.probes.calibration import (
    Calibration,
    calibrate_cascade,
    coverage_at_precision,
    first_exit,
    savings,
)
from gati.probes.costs import CostModel, measure_ms
from gati.probes.distill import TrainConfig, train_stack
from gati.probes.entries import active_prefix, candidate_prefix, layer_entry
from gati.probes.features import (
    NOVELTY_FEATURES,
    NoveltyMemory,
    ProbeOutput,
    build_features,
    class_features,
    feature_names,
    memory_reduction,
    probe_output,
)
from gati.probes.optimizer import Candidate, choose_plan
from gati.probes.reductions import REDUCTIONS, refine
from gati.probes.runtime import LayerProbe
from gati.probes.selectors import SELECTORS, Selector, fit_logistic, max_softmax
from gati.probes.splits import Split, make_split
from gati.probes.variants import TRAINED, VARIANTS, Predictor, input_stats, spec

SOURCE = "pool4"  # what records carry for every cut
FIT_SELECTORS = ("auto", *SELECTORS)  # FitConfig.selector values


@dataclass(frozen=True)
class FitConfig:
    layers: tuple[str, ...] | None = None  # candidate cuts; None = every cut in the records
    variants: tuple[str, ...] = ("linear", "mlp", "conv", "knn")
    train: TrainConfig = field(default_factory=TrainConfig)
    selector: str = "auto"  # "logistic", "max-softmax", or "auto": per cut, whichever answers
    # more requests at the target on the selector rows (full logistic, confidence + class
    # offsets, or confidence alone, each a calibrated logistic score)
    novelty: bool = True  # nearest-neighbour features (logistic selector only)
    class_features: bool = True  # per-class offsets = class-conditional thresholds
    memory_size: int = 2048  # novelty memory entries per active cut (most recent rows)
    # Which rows the *shipped* memories hold: "train" (as calibrated) or "window" (every row of
    # the window: recurring images held out of training become familiar too). Measured on
    # instance-locality: "window" 2.55x at 99.24% (worst window 98.4%), "train" 1.92x at
    # 99.54% (worst 99.3%); "window" serves what calibration did not see, so "train" it is.
    memory_rows: str = "train"
    memory_reduction: str = "pool2"  # grid of the memory (coarsened to the probe's if finer)
    knn: int = 5
    agreement_target: float = 0.99  # served agreement with the base model, whole cascade
    calibration: str = "empirical"  # or "ltt" (guarantee mode)
    delta: float = 0.1  # ltt: P(agreement < target) <= delta
    margin: float = 0.0  # empirical: calibrate to target + margin
    new_fraction: float = 0.2  # groups held out of probe training (stand-ins for new inputs)
    calib_fraction: float = 0.4  # remaining requests sent to calibration
    select_fraction: float = 0.5  # calibration groups fitting selectors / choosing the plan
    memory_budget_bytes: int = 64 << 20  # probes + selectors + novelty memories
    max_probes: int = 8
    min_gain: float = 0.01  # a plan must beat "no caches" by this share of full latency
    selector_folds: int = 5  # cross-fitting when comparing selector options
    plan_rounds: int = 3  # optimizer rounds re-rating candidates at the calibrated lam
    prune: bool = True
    keep_candidates: bool = False  # ship every trained probe (inactive) for analysis
    lookup_reps: int = 100  # timing repetitions per candidate lookup
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"variants {bad or '()'} invalid; valid: {', '.join(VARIANTS)}")
        if self.selector not in FIT_SELECTORS:
            raise ValueError(
                f"selector {self.selector!r} invalid; valid: auto, {', '.join(SELECTORS)}"
            )
        if self.calibration not in CALIBRATION_MODES:
            raise ValueError(
                f"calibration {self.calibration!r} invalid; valid: {', '.join(CALIBRATION_MODES)}"
            )
        if self.memory_rows not in ("train", "window"):
            raise ValueError(f"memory_rows must be train or window, got {self.memory_rows!r}")
        if self.memory_reduction not in REDUCTIONS:
            raise ValueError(f"memory_reduction must be one of {', '.join(REDUCTIONS)}")
        if not 0.5 < self.agreement_target < 1.0:
            raise ValueError(
                f"agreement_target must be within (0.5, 1), got {self.agreement_target}"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be within (0, 1), got {self.delta}")
        for name in ("new_fraction", "calib_fraction", "select_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be within [0, 1)")
        if self.max_probes < 1 or self.memory_size < 0 or self.knn < 1:
            raise ValueError("max_probes and knn must be >= 1, memory_size >= 0")

    @property
    def uses_novelty(self) -> bool:
        return self.selector != "max-softmax" and self.novelty and self.memory_size > 0

    def report(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["variants"] = list(self.variants)
        return d


@dataclass
class _Part:
    """One candidate probe's view of one set of rows."""

    out: ProbeOutput
    novelty: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    correct: np.ndarray  # [n] bool: probe answer == base answer


@dataclass
class _Cand:
    layer: str
    variant: str
    channels: int
    roles: dict[str, np.ndarray]
    predictor: Predictor
    memory: NoveltyMemory | None
    sel: _Part
    thr: _Part
    coverage: float = 0.0
    lookup_ms: float = 0.0
    pre_selector: Selector = field(default_factory=max_softmax)
    sel_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [n_sel]
    option: str = "max-softmax"  # which feature set its selector reads, see _selector_options

    @property
    def key(self) -> str:
        return f"{self.layer}:{self.variant}"

    @property
    def option_key(self) -> str:
        return f"{self.layer}:{self.variant}/{self.option}"


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
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Bundle:
    """Fit, calibrate and optimise probes on one window of records.

    acts: cut -> [N, C*16] pool4 activations (float16 or float32), rows in time order;
    base_logits [N, K]; channels: cut -> C; groups [N]: image / neighbourhood ids (errors
    within a group are correlated, so calibration counts groups, not requests);
    calibration_rows: explicit calibration rows (else split inside, see `splits`);
    lookup_ms: "cut:variant" -> lookup cost, overriding measurement (tests, remote costs).
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
    w_sel = _SelectorRows.of(
        g[split.select], split.novel[split.select], cfg.selector_folds, cfg.seed
    )
    memo: dict[tuple[str, str], _Novelty] = {}
    options = _selector_options(cfg, w_sel)
    cands: list[_Cand] = []
    for base in tqdm(trained, desc="selectors", disable=not progress, leave=False):
        _attach_memory_and_parts(base, acts, base_label, split, cfg, memo)
        for option in options:  # each selector option is its own candidate for the optimizer
            sel, cov, score = _fit_selector(cfg, k, base.sel, None, w_sel, option)
            c = replace(base, option=option, pre_selector=sel, coverage=cov, sel_score=score)
            c.lookup_ms = (
                float(lookup_ms[base.key])
                if lookup_ms is not None and base.key in lookup_ms
                else _measure_lookup(c, acts, split, cfg)
            )
            cands.append(c)
    chosen = _choose(cands, cfg, cost, k, g[split.select], w_sel, say)
    selectors = _plan_selectors(chosen, cfg, k, w_sel)
    calib = _calibrate(chosen, selectors, cfg, cost, "thr", g[split.threshold])
    scores, _ = _plan_scores(chosen, selectors, "thr", len(split.threshold))
    exits = first_exit(scores, np.array(calib.thresholds))
    lat = cost.latencies([c.layer for c in chosen], [c.lookup_ms for c in chosen], exits)
    expected = float(lat.mean()) if chosen else cost.full_ms
    if not chosen or calib.hit_rate == 0 or expected >= cost.full_ms * (1 - cfg.min_gain):
        say(f"no caches pay (expected {expected:.3f} ms vs {cost.full_ms:.3f} ms)")
        chosen, selectors = [], []
        calib = _calibrate([], [], cfg, cost, "thr", g[split.threshold])
        expected, exits = cost.full_ms, np.full(len(split.threshold), -1)
    if cfg.memory_rows == "window" and chosen:
        chosen = _window_memories(chosen, selectors, acts, base_label, cfg)
    return _assemble(
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
) -> list[_Cand]:
    prev = _previous_roles(previous)
    stacks: dict[int, list[str]] = {}
    for layer in layers:  # cuts of equal width train together
        stacks.setdefault(channels[layer], []).append(layer)
    trained: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    to_train = [v for v in cfg.variants if v in TRAINED]
    total = sum(len(stacks) for _ in to_train)
    bar = tqdm(total=total * cfg.train.epochs, desc="distil", disable=not progress, leave=False)
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
                cfg.train,
                init,
                progress=lambda _e: bar.update(1),
            )
            bar.update(
                max(0, cfg.train.epochs - cfg.train.warm_epochs)
                if all(r is not None for r in init)
                else 0
            )
            for layer, r, (mu, scale) in zip(stack_layers, roles, stats, strict=True):
                trained[f"{layer}:{variant}"] = ({**r, "in_mu": mu, "in_scale": scale}, ch)
    bar.close()
    out = []
    for layer in layers:
        for variant in cfg.variants:
            roles, ch = trained[f"{layer}:{variant}"]
            out.append(
                _Cand(
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
    c: _Cand,
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
        setattr(c, part, _Part(out, answers, out.label == base_label[r]))


SELECTOR_OPTIONS = ("conf", "conf+class", "full", "gated")
MIN_NOVEL = (20, 2)  # a familiarity gate needs this many stand-in rows, from this many groups
GATE_QUANTILE = 0.02  # gate radius: this quantile of the stand-ins' nearest-neighbour distance
CLASS_UNITS = 10  # per-class offsets need this many selector groups per class


def _selector_options(cfg: FitConfig, rows: _SelectorRows) -> list[str]:
    """Selector options per cut, cheapest first; with `auto` each is its own candidate for the
    optimizer, which weighs what it answers against what its lookup costs. Every option is a
    fitted logistic score: the cascade's threshold family assumes scores that estimate
    P(agree), and raw max-softmax is overconfident exactly where it errs ("max-softmax" is
    served as calibrated confidence: the same ranking on a probability scale).
    - conf: calibrated confidence; conf+class: plus per-class offsets (only with enough groups:
      with 30 images, class offsets memorise images);
    - full: every feature, novelty included;
    - gated: full, and a hard familiarity gate: never serve a request farther from the memory
      than new inputs lie (radius from the stand-ins for new inputs). Probes fine-tuned on
      recurring inputs are as confident on new ones, and the learned weights alone, fitted on
      a handful of new images, cannot be trusted to say no."""
    if cfg.selector == "max-softmax":
        return ["conf"]
    if cfg.selector == "logistic":
        return ["gated" if _can_gate(cfg, rows) else "full"]
    out = ["conf"]
    if cfg.class_features and rows.units >= CLASS_UNITS * 10:
        out.append("conf+class")
    out.append("gated" if _can_gate(cfg, rows) else "full")
    return out


def _can_gate(cfg: FitConfig, rows: _SelectorRows) -> bool:
    """Traffic recurs (selector rows whose image was also trained on) and there are enough
    stand-ins for new inputs to place a familiarity gate. Then the novelty selector is always
    gated: an ungated one was measured serving new images at 61-89% agreement after looking
    fine on the handful of new images in its selector rows. Without recurrence (uniform
    traffic: every request is new) a gate would close everything, so none is placed."""
    return (
        cfg.uses_novelty
        and int(rows.novel.sum()) >= MIN_NOVEL[0]
        and rows.novel_groups >= MIN_NOVEL[1]
        and int((~rows.novel).sum()) >= MIN_NOVEL[0]
    )


def _option_names(
    cfg: FitConfig, k: int, option: str, rows: _SelectorRows, *, prev: bool
) -> tuple[str, ...]:
    if option == "conf":
        return ("conf", "conf_logit")
    if option == "conf+class":
        return ("conf", "conf_logit", *class_features(k))
    classes = cfg.class_features and rows.units >= CLASS_UNITS * k
    return feature_names(k, prev=prev, novelty=cfg.uses_novelty, classes=classes)


def _group_weights(groups: np.ndarray) -> np.ndarray:
    """1 / group size: each image counts once when fitting a selector."""
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv]


@dataclass(frozen=True)
class _SelectorRows:
    """How the selector rows are weighed and folded (both by group: an image counts once and
    never sits on both sides of a fold)."""

    weights: np.ndarray  # [n] 1 / group size
    folds: np.ndarray  # [n] fold id
    units: int  # distinct groups
    novel: np.ndarray  # [n] bool: stand-ins for new inputs (group never in probe training)
    novel_groups: int

    @classmethod
    def of(cls, groups: np.ndarray, novel: np.ndarray, folds: int, seed: int) -> _SelectorRows:
        uniq, inv = np.unique(groups, return_inverse=True)
        fold_of_group = np.random.default_rng(seed).permutation(len(uniq)) % max(folds, 1)
        novel_groups = len(np.unique(groups[novel]))
        return cls(_group_weights(groups), fold_of_group[inv], len(uniq), novel, novel_groups)


def _fit_selector(
    cfg: FitConfig,
    k: int,
    part: _Part,
    prev: tuple[np.ndarray, np.ndarray] | None,
    rows: _SelectorRows,
    option: str,
    *,
    coverage: bool = True,
) -> tuple[Selector, float, np.ndarray]:
    """(selector of `option`, the share of `part` it answers at the target agreement, its
    out-of-fold scores [n]): comparing options in-sample would favour the richest one."""
    pl, pc = prev if prev is not None else (None, None)
    names = _option_names(cfg, k, option, rows, prev=prev is not None)
    feats = build_features(names, part.out, prev_label=pl, prev_conf=pc, novelty=part.novelty)
    use = np.ones(len(feats), bool)
    gate = None
    if option == "gated":
        logdist = feats[:, names.index("nn_logdist")]
        gate = float(np.quantile(logdist[rows.novel], GATE_QUANTILE))
        use = logdist < gate  # the gated selector is fitted where it may serve
        if use.sum() < MIN_NOVEL[0]:
            use[:] = True
    sel = fit_logistic(
        feats[use], part.correct[use], names, weights=rows.weights[use], units=rows.units
    )
    sel = replace(sel, gate=gate)
    if not coverage:
        return sel, float("nan"), np.zeros(0, np.float32)
    score = np.zeros(len(part.correct), np.float32)
    for f in np.unique(rows.folds):
        held = rows.folds == f
        if held.all():  # a single group: nothing to cross-fit with
            score = sel.score(feats)
            break
        fit_rows = ~held & use
        if fit_rows.sum() < 2:
            fit_rows = ~held
        fitted = fit_logistic(
            feats[fit_rows],
            part.correct[fit_rows],
            names,
            weights=rows.weights[fit_rows],
            units=rows.units,
        )
        score[held] = replace(fitted, gate=gate).score(feats[held])
    return sel, coverage_at_precision(score, part.correct, cfg.agreement_target)[0], score


def _uses_memory(sel: Selector) -> bool:
    return any(f in NOVELTY_FEATURES for f in sel.features)


def _measure_lookup(
    c: _Cand, acts: Mapping[str, np.ndarray], split: Split, cfg: FitConfig
) -> float:
    """Low-quantile time of one row through predictor, memory, features and selector."""
    memory = c.memory if _uses_memory(c.pre_selector) else None
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


def _as_candidate(c: _Cand, cost: CostModel) -> Candidate:
    mem = sum(v.nbytes for v in c.roles.values())
    if c.memory is not None and _uses_memory(c.pre_selector) and c.variant != "knn":
        mem += sum(v.nbytes for v in c.memory.tensors().values())
    return Candidate(
        c.layer,
        f"{c.variant}/{c.option}",
        cost.position(c.layer),
        cost.time_to_cut(c.layer),
        c.coverage,
        cost.overhead(c.lookup_ms),
        cost.hit_delay(c.lookup_ms),
        mem,
    )


# ---- the plan's cascade --------------------------------------------------------------------
def _plan_selectors(
    chosen: Sequence[_Cand], cfg: FitConfig, k: int, weights: _SelectorRows
) -> list[Selector]:
    """Selectors along the plan, fitted on the selector rows; each may read the previous one's
    probe answer (whatever it decided: features do not depend on earlier exits)."""
    out, prev = [], None
    for c in chosen:
        out.append(_fit_selector(cfg, k, c.sel, prev, weights, c.option, coverage=False)[0])
        prev = (c.sel.out.label, c.sel.out.conf)
    return out


def _plan_scores(
    chosen: Sequence[_Cand], selectors: Sequence[Selector], part: str, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, L], correct [n, L]) of the plan on the n rows of part "sel" or "thr"."""
    parts = [getattr(c, part) for c in chosen]
    scores, correct = np.zeros((n, len(parts)), np.float32), np.zeros((n, len(parts)), bool)
    pl: np.ndarray | None = None
    pc: np.ndarray | None = None
    for i, (p, sel) in enumerate(zip(parts, selectors, strict=True)):
        feats = build_features(sel.features, p.out, prev_label=pl, prev_conf=pc, novelty=p.novelty)
        scores[:, i], correct[:, i] = sel.score(feats), p.correct
        pl, pc = p.out.label, p.out.conf
    return scores, correct


def _calibrate(
    chosen: Sequence[_Cand],
    selectors: Sequence[Selector],
    cfg: FitConfig,
    cost: CostModel,
    part: str,
    groups: np.ndarray,
) -> Calibration:
    scores, correct = _plan_scores(chosen, selectors, part, len(groups))
    s = savings([cost.time_to_cut(c.layer) for c in chosen], cost.full_ms)
    return calibrate_cascade(
        scores,
        correct,
        s,
        target=cfg.agreement_target,
        mode=cfg.calibration,
        delta=cfg.delta,
        margin=cfg.margin,
        groups=groups,
    )


def _expected_ms(
    chosen: Sequence[_Cand],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    weights: _SelectorRows,
) -> float:
    """Expected latency of a plan on the selector rows (selectors and lam fitted there)."""
    if not chosen:
        return cost.full_ms
    sels = _plan_selectors(chosen, cfg, k, weights)
    calib = _calibrate(chosen, sels, cfg, cost, "sel", groups)
    scores, _ = _plan_scores(chosen, sels, "sel", len(groups))
    exits = first_exit(scores, np.array(calib.thresholds))
    return float(
        cost.latencies([c.layer for c in chosen], [c.lookup_ms for c in chosen], exits).mean()
    )


def _choose(
    cands: Sequence[_Cand],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    rows: _SelectorRows,
    say: Callable[[str], None],
) -> list[_Cand]:
    """Optimizer, pruning, and a few rounds of agreeing with the calibration.

    Round 0 rates each candidate by its coverage at per-probe agreement A, which undervalues
    early probes: the cascade shares one error budget over all requests. Each later round
    calibrates lam for the last plan on the selector rows and rates every candidate by the share
    of rows it would answer at that lam (score > 1 - lam * s_k), then re-optimises. The plan of
    least expected latency on the selector rows wins.
    """
    by_key = {c.option_key: c for c in cands}
    best: tuple[float, list[_Cand]] = (cost.full_ms, [])
    coverage = {c.option_key: c.coverage for c in cands}
    seen: set[tuple[str, ...]] = set()
    for round_ in range(cfg.plan_rounds):
        plan = choose_plan(
            [replace(_as_candidate(c, cost), coverage=coverage[c.option_key]) for c in cands],
            cost.full_ms,
            memory_budget=cfg.memory_budget_bytes,
            max_probes=cfg.max_probes,
            min_gain=cfg.min_gain,
        )
        chosen = [by_key[f"{p.layer}:{p.variant}"] for p in plan.chosen]
        say(
            f"optimizer round {round_}: {[c.option_key for c in chosen]} "
            f"(model speedup {plan.speedup:.2f}x)"
        )
        if cfg.prune and chosen:
            chosen = _prune(chosen, cands, cfg, cost, k, groups, rows, say)
        key = tuple(c.option_key for c in chosen)
        if not chosen or key in seen:
            break
        seen.add(key)
        expected = _expected_ms(chosen, cfg, cost, k, groups, rows)
        if expected < best[0]:
            best = (expected, chosen)
        sels = _plan_selectors(chosen, cfg, k, rows)
        lam = _calibrate(chosen, sels, cfg, cost, "sel", groups).lam
        for c in cands:
            s_k = savings([cost.time_to_cut(c.layer)], cost.full_ms)[0]
            coverage[c.option_key] = float((c.sel_score > 1.0 - lam * s_k).mean())
    return best[1]


def _prune(
    chosen: list[_Cand],
    cands: Sequence[_Cand],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    weights: _SelectorRows,
    say: Callable[[str], None],
) -> list[_Cand]:
    """Local search on the selector rows, with the cascade calibrated for real: drop a probe, or
    give it a cheaper selector option, one move at a time while that lowers expected latency.
    The optimizer's nested-coverage model cannot see the shared error budget, nor that a
    richer selector's extra hits may not pay for its memory lookup."""
    by_key = {c.option_key: c for c in cands}
    cheaper = {
        c.option_key: [
            by_key[f"{c.key}/{o}"]
            for o in SELECTOR_OPTIONS[: SELECTOR_OPTIONS.index(c.option)]
            if f"{c.key}/{o}" in by_key
        ]
        for c in cands
    }
    current = _expected_ms(chosen, cfg, cost, k, groups, weights)
    while chosen:
        moves = [chosen[:i] + chosen[i + 1 :] for i in range(len(chosen)) if len(chosen) > 1]
        moves += [
            [*chosen[:i], alt, *chosen[i + 1 :]]
            for i, c in enumerate(chosen)
            for alt in cheaper[c.option_key]
        ]
        if not moves:
            break
        trials = [(_expected_ms(m, cfg, cost, k, groups, weights), n) for n, m in enumerate(moves)]
        best, n = min(trials)
        if best >= current - 1e-6:
            break
        say(
            f"{[c.option_key for c in chosen]} -> {[c.option_key for c in moves[n]]}: "
            f"{current:.3f} -> {best:.3f} ms"
        )
        chosen, current = moves[n], best
    return chosen


def _window_memories(
    chosen: Sequence[_Cand],
    selectors: Sequence[Selector],
    acts: Mapping[str, np.ndarray],
    base_label: np.ndarray,
    cfg: FitConfig,
) -> list[_Cand]:
    """The plan's memories rebuilt from every row of the window (standardised as calibrated).

    Calibration placed new-input stand-ins outside the memory; at serving time the images
    held out for that are recurring ones, and leaving them out of the memory would keep them
    unfamiliar (no hits) for a whole bundle's lifetime.
    """
    out = []
    for c, sel in zip(chosen, selectors, strict=True):
        if c.memory is None or not (c.variant == "knn" or _uses_memory(sel)):
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


# ---- the bundle ----------------------------------------------------------------------------------
def _assemble(
    chosen: Sequence[_Cand],
    selectors: Sequence[Selector],
    calib: Calibration,
    cands: Sequence[_Cand],
    cfg: FitConfig,
    cost: CostModel,
    split: Split,
    exits: np.ndarray,
    expected: float,
    *,
    model_id: str,
    arch: str,
    fingerprint: str,
    version: int,
    num_classes: int,
) -> Bundle:
    entries, tensors = [], {}
    for i, (c, sel) in enumerate(zip(chosen, selectors, strict=True)):
        hits = exits == i
        entry, t = layer_entry(
            c.layer,
            c.variant,
            c.channels,
            c.roles,
            prefix=active_prefix(c.layer),
            selector=sel,
            memory=c.memory if _uses_memory(sel) else None,
            threshold=calib.thresholds[i],
            extra={
                "calibration_size": len(split.threshold),
                "lookup_cost_ms": round(c.lookup_ms, 5),
                "time_to_cut_ms": round(cost.time_to_cut(c.layer), 5),
                "coverage_alone": round(c.coverage, 5),
                "selector_option": c.option,
                "hit_rate_calibration": round(float(hits.mean()), 5),
                "agreement_among_hits_calibration": (
                    round(float(c.thr.correct[hits].mean()), 5) if hits.any() else None
                ),
            },
        )
        entries.append(entry)
        tensors.update(t)
    candidates = []
    if cfg.keep_candidates:
        unique = {c.key: c for c in cands}  # one probe per (cut, variant), whatever the selector
        for c in unique.values():
            entry, t = layer_entry(
                c.layer,
                c.variant,
                c.channels,
                c.roles,
                prefix=candidate_prefix(c.layer, c.variant),
                extra={"agreement_calibration": round(float(c.thr.correct.mean()), 5)},
            )
            candidates.append(entry)
            tensors.update(t)
    report = {
        "config": cfg.report(),
        "split": split.sizes(),
        "calibration": calib.report(),
        "cost_model": cost.describe(),
        "expected_ms_calibration": round(expected, 5),
        "speedup_calibration": round(cost.full_ms / expected, 4),
        "candidates": [
            {
                "layer": c.layer,
                "variant": c.variant,
                "selector": c.option,
                "coverage_alone": round(c.coverage, 5),
                "lookup_ms": round(c.lookup_ms, 5),
                "agreement_calibration": round(float(c.thr.correct.mean()), 5),
            }
            for c in cands
        ],
    }
    return Bundle.create(
        model_id=model_id,
        arch=arch,
        model_fingerprint=fingerprint,
        layers=entries,
        tensors=tensors,
        version=version,
        num_classes=num_classes,
        agreement_target=cfg.agreement_target,
        candidates=candidates,
        extra={"fit": report},
    )
