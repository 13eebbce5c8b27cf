"""One retraining round: window -> candidate bundle -> held-out comparison -> publish or not.

The newest `holdout_fraction` of the window is held out; the candidate is fitted on the rest
(`gati.probes.fitting.fit.fit_bundle`: distillation warm-started from the last fit, selectors with a
novelty memory refreshed from these records, thresholds calibrated to the agreement target,
the optimizer run on stage latencies measured just now). Then the candidate and the bundle
currently in Redis serve the held-out records through the real lookup code
(`gati.probes.fitting.evaluate.evaluate_bundle`) and `decide` says whether the candidate goes out.

Held-out records come *after* everything the candidate saw, so they stand for the traffic it
will serve next; the bundle that is published is exactly the one that was evaluated.

Labels are biased once caches serve: every miss is labelled but only the sampled share f of
hits (shadow completions). The hits are where a cache errs, and the confidently wrong answers
of a new bundle fall mostly on inputs the last bundle also found easy, so a window that
under-counts hits by 1/f under-counts errors too and calibrates optimistically. Measured in an
offline replay of the loop (ResNet-20, `instance-locality`, f = 0.2): held-out agreement
0.992-0.994, served agreement 0.97-0.98. So each labelled hit stands for 1/f served hits: it
is repeated that many times (stochastic rounding) in the fit and in the held-out comparison;
f is measured from the records (labelled hits / hits), which also covers hits whose shadow
completion was skipped for want of a slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gati import records as rec_mod
from gati.models import StagedModel
from gati.probes.fitting.costs import CostModel, measure_stage_ms
from gati.probes.fitting.evaluate import Cascade, evaluate_bundle
from gati.probes.fitting.fit import fit_bundle
from gati.probes.fitting.fit_config import CostConfig, FitConfig
from gati.probes.fitting.groups import neighbourhood_groups
from gati.probes.fitting.rows import Records
from gati.probes.serving.bundle import Bundle
from gati.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What a bundle would have done on the held-out records (served agreement over all)."""

    requests: int
    agreement: float
    hit_rate: float
    speedup: float
    layers: int

    @classmethod
    def of(cls, c: Cascade, layers: int) -> Evaluation:
        """From the cascade on held-out records (never empty, so no figure is None)."""
        return cls(
            c.requests, float(c.agreement), float(c.hit_rate), float(c.speedup_expected), layers
        )

    def meets(self, target: float) -> bool:
        return self.agreement >= target


def decide(
    candidate: Evaluation, current: Evaluation | None, target: float, min_gain: float
) -> tuple[bool, str]:
    """Publish the candidate? (yes/no, why). Pure, so the policy tests without a server.

    - a candidate below the agreement target on held-out records never goes out;
    - one that meets it replaces a current bundle that does not;
    - otherwise it must be faster by more than `min_gain` (relative expected speedup), so a
      bundle is not replaced by an equally good one on every round;
    - with no current bundle, it must bring some speedup (an empty plan is not published).
    """
    if not candidate.meets(target):
        return False, f"candidate agreement {candidate.agreement:.4f} < target {target}"
    if current is None:
        if candidate.layers == 0 or candidate.speedup <= 1.0 + min_gain:
            return False, f"no current bundle; candidate speedup {candidate.speedup:.3f}x too small"
        return True, f"first bundle: {candidate.speedup:.3f}x at {candidate.agreement:.4f}"
    if not current.meets(target):
        return True, (
            f"current agreement {current.agreement:.4f} < target; candidate "
            f"{candidate.agreement:.4f} at {candidate.speedup:.3f}x"
        )
    if candidate.speedup > current.speedup * (1.0 + min_gain):
        return True, f"speedup {current.speedup:.3f}x -> {candidate.speedup:.3f}x"
    return False, f"speedup {candidate.speedup:.3f}x does not beat {current.speedup:.3f}x"


@dataclass
class RoundResult:
    publish: bool
    reason: str
    candidate: Bundle  # publishable (inactive candidate probes stripped)
    fitted: Bundle  # with every trained probe, for the next warm start
    candidate_eval: Evaluation
    current_eval: Evaluation | None
    train_records: int
    heldout_records: int
    groups: int
    seconds: float


def stacked(records: Sequence[Record], cuts: Sequence[str]) -> Records:
    """Stack labelled pool4 records over the cuts every one of them carries (stage order);
    each is its own group (no image is named; `round` derives neighbourhoods when asked)."""
    have = set(rec_mod.common_layers(records))
    layers = [c for c in cuts if c in have and records[0].reduction(c) == "pool4"]
    if not layers:
        raise ValueError(f"records carry no pool4 activation at any cut of the model ({cuts})")
    acts = {c: rec_mod.stack(records, c) for c in layers}
    logits = np.stack([r.base_scores for r in records]).astype(np.float32)  # type: ignore[misc]
    return Records(acts, logits, groups=np.arange(len(records)))


MAX_HIT_WEIGHT = 20.0  # a labelled hit stands for at most this many (f >= 5%)


def reweight(records: Sequence[Record], hit_label_rate: float, seed: int = 0) -> list[Record]:
    """Repeat each labelled hit ~1/hit_label_rate times (stochastic rounding), order kept."""
    w = min(MAX_HIT_WEIGHT, 1.0 / max(hit_label_rate, 1e-9))
    if w <= 1.0:
        return list(records)
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for r in records:
        k = int(w) + int(rng.random() < w - int(w)) if r.hit else 1
        out.extend([r] * k)
    return out


def measured_rtt_ms(window: Sequence[Record], default: float, min_records: int = 50) -> float:
    """The mean lookup round trip recorded in `window`, or `default` before there are enough.

    A reply that came after its request had finished is recorded with the time the request
    waited, so the mean is the expected delay before a hit can answer at the cuts in use. A
    high percentile instead charged every hit with the late replies' wait: with 29% of replies
    late it read 4 ms where the median was 0.7 ms, and no probe looked worth publishing."""
    rtts = [r.lookup_rtt_ms for r in window if r.lookup_rtt_ms > 0]
    return float(np.mean(rtts)) if len(rtts) >= min_records else default


class Learner:
    def __init__(
        self,
        model: StagedModel,
        model_id: str,
        fit_config: FitConfig,
        *,
        holdout_fraction: float = 0.25,
        min_gain: float = 0.02,
        cost_config: CostConfig | None = None,
        group: bool = True,
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.fingerprint = model.fingerprint()
        self.config = fit_config
        self.target = fit_config.agreement_target
        self.holdout_fraction = holdout_fraction
        self.min_gain = min_gain
        self.cost_config = cost_config or CostConfig()
        self.group = group
        self._rounds = 0

    def cost_model(self, window: Sequence[Record] = ()) -> CostModel:
        """Stage latencies measured now (the machine's load changes; so does the best plan),
        and the lookup round trip the inference service measured on recent requests."""
        stage_ms = measure_stage_ms(self.model, reps=30, warmup=5)
        return CostModel(
            self.model.cut_names,
            stage_ms,
            mode=self.cost_config.lookup_mode,
            rtt_ms=measured_rtt_ms(window, self.cost_config.rtt_ms),
            send_ms=self.cost_config.send_ms,
        )

    def round(
        self,
        window: Sequence[Record],
        current: Bundle | None,
        warm: Bundle | None,
        hit_label_rate: float = 1.0,
    ) -> RoundResult:
        """Fit on the older part of `window`, compare on the newest; `hit_label_rate` is the
        share of served hits that carry a label (see the module docstring)."""
        t0 = time.perf_counter()
        self._rounds += 1
        n = len(window)
        n_hold = max(1, int(n * self.holdout_fraction))
        fit_part = reweight(window[: n - n_hold], hit_label_rate, seed=2 * self._rounds)
        held = reweight(window[n - n_hold :], hit_label_rate, seed=2 * self._rounds + 1)
        data = stacked(fit_part, self.model.cut_names)
        cost = self.cost_model(window)
        log.info("cost model: full model %.2f ms; %s", cost.full_ms, cost.describe()["assumes"])
        groups = (
            neighbourhood_groups(data.acts, data.channels, list(data.acts)) if self.group else None
        )
        fitted = fit_bundle(
            data.acts,
            data.logits,
            channels=data.channels,
            cost=cost,
            model_id=self.model_id,
            arch=self.model.arch,
            fingerprint=self.fingerprint,
            groups=groups,
            previous=warm if warm is not None else current,
            config=self.config,
            keep_candidates=True,  # warm starts need every probe; stripped before publishing
            log=lambda msg: log.info("fit: %s", msg),
        )
        candidate = fitted.without_candidates()
        test = stacked(held, self.model.cut_names)
        cand_eval = self._evaluate(candidate, test, cost)
        cur_eval = self._evaluate(current, test, cost) if current is not None else None
        if current is not None and cur_eval is None:
            log.warning("current bundle v%d cannot be evaluated on these records", current.version)
        publish, reason = decide(cand_eval, cur_eval, self.target, self.min_gain)  # type: ignore[arg-type]
        return RoundResult(
            publish,
            reason,
            candidate,
            fitted,
            cand_eval,  # type: ignore[arg-type]
            cur_eval,
            len(fit_part),
            len(held),
            len(np.unique(groups)) if groups is not None else len(fit_part),
            time.perf_counter() - t0,
        )

    def _evaluate(self, bundle: Bundle, data: Records, cost: CostModel) -> Evaluation | None:
        if any(layer not in data.acts for layer, _ in bundle.plan):
            return None
        report = evaluate_bundle(bundle, data.acts, data.logits, cost=cost)
        return Evaluation.of(report.cascade, len(bundle.layers))
