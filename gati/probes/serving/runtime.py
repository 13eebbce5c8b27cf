"""ProbeRuntime: a verified bundle turned into lookups (the cache service's hot path).

`lookup(layer, x, states)` runs the layer's predictor on reduced activations x [rows, D],
builds the selector's features (reading and updating each row's `RowState`, which carries the
previous active cut's answer), and answers hit / label / confidence per row. It is numpy only:
for one row a torch call's fixed cost would exceed the whole probe. A runtime is immutable;
`with_thresholds` returns a new one, so a live guard can tighten thresholds and swap
atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gati.probes.serving.bundle import Bundle, LayerError
from gati.probes.serving.features import (
    CONF_EPS,
    NOVELTY_FEATURES,
    NoveltyMemory,
    ProbeOutput,
    build_features,
    memory_from_roles,
    probe_output,
)
from gati.probes.serving.live import LiveRule
from gati.probes.serving.reductions import grid
from gati.probes.serving.selectors import Selector, selector_from_manifest
from gati.probes.serving.variants import Predictor, spec


@dataclass(slots=True)
class RowState:
    """Per (request, batch row) memory between cuts; the caller keeps it, the runtime edits it."""

    prev_label: int = -1  # previous active cut's probe answer (-1: none yet)
    prev_conf: float = 0.0  # its top probability
    lookups: int = 0  # cuts looked up so far for this row


class LayerProbe:
    """One active layer: predictor + optional novelty memory + selector + threshold."""

    def __init__(self, entry: Mapping[str, Any], roles: Mapping[str, np.ndarray]) -> None:
        self.layer: str = entry["layer"]
        self.variant: str = entry["variant"]
        self.reduction: str = entry["reduction"]
        if spec(self.variant).reduction != self.reduction:
            raise ValueError(
                f"variant {self.variant} reads {spec(self.variant).reduction}, "
                f"entry says {self.reduction}"
            )
        self.channels = int(entry["channels"])
        self.predictor = Predictor(self.variant, self.channels, roles)
        self.input_dim = self.predictor.input_dim
        if int(entry["input_dim"]) != self.input_dim:
            raise ValueError(f"input_dim {entry['input_dim']} != {self.input_dim} of the predictor")
        sel = entry.get("selector") or {"kind": "max-softmax", "features": ["conf"]}
        self.selector: Selector = selector_from_manifest(sel, dict(roles))
        nov = entry.get("novelty")
        self.memory: NoveltyMemory | None
        if self.variant == "knn":
            self.memory = self.predictor.memory  # one memory answers both
        else:
            self.memory = memory_from_roles(roles, nov, self.channels) if nov else None
        if self.memory is None and any(f in self.selector.features for f in NOVELTY_FEATURES):
            raise ValueError("selector reads novelty features but the entry has no novelty memory")
        self.threshold = float(entry.get("threshold", 1.0))
        live = entry.get("live")  # the live memory's rule; None: the bundle ships none
        self.live: LiveRule | None = (
            LiveRule.from_entry(live, roles, self.channels) if live is not None else None
        )
        if self.live is not None and grid(self.live.reduction) > grid(self.reduction):
            raise ValueError(
                f"live memory keys at {self.live.reduction} are finer than the probe's "
                f"input ({self.reduction}), which is all a lookup carries"
            )
        self.entry = dict(entry)
        # The one-row path reads plain floats: weight per named feature, per-class offsets.
        names = self.selector.features
        self._weights = [
            (n, float(w))
            for n, w in zip(names, self.selector.w, strict=True)
            if not n.startswith("class_")
        ]
        self._class_w = [0.0] * self.predictor.num_classes
        for n, w in zip(names, self.selector.w, strict=True):
            if n.startswith("class_"):
                self._class_w[int(n[6:])] = float(w)
        self._log_k = math.log(self.predictor.num_classes)
        self._needs_margin = "margin" in names
        self._needs_entropy = "entropy" in names

    def outputs(
        self, x: np.ndarray, prev_label: np.ndarray | None, prev_conf: np.ndarray | None
    ) -> tuple[np.ndarray, ProbeOutput]:
        """(selector score [n], probe output) for reduced activations x [n, D]."""
        out = probe_output(self.predictor(x))
        nov = self._novelty(x)
        feats = build_features(
            self.selector.features, out, prev_label=prev_label, prev_conf=prev_conf, novelty=nov
        )
        return self.selector.score(feats), out

    def _novelty(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Nearest-neighbour answers for x; a knn predictor already looked them up."""
        if self.variant == "knn":
            return self.predictor.last_query
        return self.memory.query(x, self.reduction) if self.memory is not None else None

    def score_one(
        self, x: np.ndarray, prev_label: int, prev_conf: float
    ) -> tuple[float, int, float]:
        """(score, label, top probability) for one row x [1, D]: `outputs` in plain Python
        floats, because for one row each numpy call (about 1 us) costs more than its work.
        Tested to agree with `outputs`."""
        logits = self.predictor(x)[0].tolist()
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        total = sum(e)
        probs = [v / total for v in e]
        label = logits.index(top)
        conf = probs[label]
        if self.selector.kind == "max-softmax":
            return conf, label, conf
        c = min(max(conf, CONF_EPS), 1.0 - CONF_EPS)
        f: dict[str, float] = {"conf": conf, "conf_logit": math.log(c) - math.log1p(-c)}
        if self._needs_margin:
            f["margin"] = conf - sorted(probs)[-2]
        if self._needs_entropy:
            f["entropy"] = -sum((p + 1e-12) * math.log(p + 1e-12) for p in probs) / self._log_k
        f["has_prev"] = float(prev_label >= 0)
        f["prev_agree"] = float(prev_label == label)
        f["prev_conf"] = prev_conf
        nov = self._novelty(x)
        if nov is not None:
            dist, near, nearest = nov
            near_labels = near[0].tolist()
            f["nn_logdist"] = math.log(float(dist[0]) + 1e-3)
            if self.selector.gate is not None and f["nn_logdist"] >= self.selector.gate:
                return 0.0, label, conf  # unfamiliar: this selector never serves it
            f["nn_agree"] = near_labels.count(label) / len(near_labels)
            f["nn1_agree"] = float(int(nearest[0]) == label)
        z = self.selector.b + self._class_w[label]
        for name, w in self._weights:
            z += w * f[name]
        score = 1.0 / (1.0 + math.exp(-min(max(z, -40.0), 40.0)))
        return score, label, conf


class ProbeRuntime:
    """Lookups for every active layer of one bundle."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.model: str = bundle.model_id
        self.model_fingerprint: str = bundle.model_fingerprint
        self.version: int = bundle.version
        self.num_classes = int(bundle.manifest.get("num_classes", 10))
        self._probes: dict[str, LayerProbe] = {}
        for entry in bundle.layers:
            try:
                probe = LayerProbe(entry, bundle.layer_tensors(entry))
            except (KeyError, ValueError) as exc:
                raise LayerError(f"layer {entry.get('layer')!r}: {exc}") from None
            self._probes[probe.layer] = probe
        # (layer, reduction) in stage order: what the inference service sends, where.
        self.layers: list[tuple[str, str]] = bundle.plan

    @classmethod
    def from_bytes(cls, data: bytes, expected_fingerprint: str | None = None) -> ProbeRuntime:
        return cls(Bundle.from_bytes(data, expected_fingerprint=expected_fingerprint))

    def probe(self, layer: str) -> LayerProbe:
        try:
            return self._probes[layer]
        except KeyError:
            raise KeyError(
                f"no active probe at layer {layer!r} in bundle v{self.version}; "
                f"active: {', '.join(self._probes) or '(none)'}"
            ) from None

    @property
    def live_active(self) -> bool:
        """Some active layer's live rule can answer (its calibrated radius is above 0)."""
        return any(p.live is not None and p.live.active for p in self._probes.values())

    def input_dim(self, layer: str) -> int:
        return self.probe(layer).input_dim

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: p.threshold for name, p in self._probes.items()}

    def with_thresholds(self, thresholds: Mapping[str, float]) -> ProbeRuntime:
        """A new runtime whose listed layers use new thresholds (e.g. tightened by a guard)."""
        return ProbeRuntime(self.bundle.with_thresholds(thresholds))

    def new_state(self) -> RowState:
        return RowState()

    def lookup(
        self, layer: str, x: np.ndarray, states: Sequence[RowState]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x [rows, D] -> (hit bool [rows], label int32 [rows], confidence float32 [rows]).

        confidence is the selector's score (for a learned selector, the estimated probability
        that the answer equals the base model's). Updates each row's state.
        """
        probe = self.probe(layer)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != probe.input_dim:
            raise ValueError(
                f"layer {layer} expects [rows, {probe.input_dim}] ({probe.reduction}), "
                f"got {list(x.shape)}"
            )
        if len(states) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} rows but {len(states)} states")
        if len(states) == 1:
            s = states[0]
            score1, label1, conf1 = probe.score_one(x, s.prev_label, s.prev_conf)
            s.prev_label, s.prev_conf = label1, conf1
            s.lookups += 1
            return (
                np.array([score1 > probe.threshold]),
                np.array([label1], np.int32),
                np.array([score1], np.float32),
            )
        prev_label = np.fromiter((s.prev_label for s in states), np.int64, len(states))
        prev_conf = np.fromiter((s.prev_conf for s in states), np.float32, len(states))
        score, out = probe.outputs(x, prev_label, prev_conf)
        for i, s in enumerate(states):
            s.prev_label = int(out.label[i])
            s.prev_conf = float(out.conf[i])
            s.lookups += 1
        return score > probe.threshold, out.label.astype(np.int32), score.astype(np.float32)
