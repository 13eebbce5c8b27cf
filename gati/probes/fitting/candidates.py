"""What fitting knows about one candidate probe: its evidence on the selector and threshold
rows, and how the selector rows are weighed and folded."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gati.probes.serving.features import NoveltyMemory, ProbeOutput
from gati.probes.serving.selectors import Selector, max_softmax
from gati.probes.serving.variants import Predictor


@dataclass
class Evidence:
    """One candidate probe's view of one set of rows."""

    out: ProbeOutput
    novelty: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    correct: np.ndarray  # [n] bool: probe answer == base answer


@dataclass
class ProbeCandidate:
    """A trained probe at one cut, with one selector option: what the optimizer chooses from."""

    layer: str
    variant: str
    channels: int
    roles: dict[str, np.ndarray]
    predictor: Predictor
    memory: NoveltyMemory | None
    sel: Evidence
    thr: Evidence
    coverage: float = 0.0
    lookup_ms: float = 0.0
    pre_selector: Selector = field(default_factory=max_softmax)
    sel_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [n_sel]
    option: str = "max-softmax"  # which feature set its selector reads, see selector_options

    @property
    def key(self) -> str:
        return f"{self.layer}:{self.variant}"

    @property
    def option_key(self) -> str:
        return f"{self.layer}:{self.variant}/{self.option}"


def group_weights(groups: np.ndarray) -> np.ndarray:
    """1 / group size: each image counts once when fitting a selector."""
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv]


@dataclass(frozen=True)
class SelectorRows:
    """How the selector rows are weighed and folded (both by group: an image counts once and
    never sits on both sides of a fold)."""

    weights: np.ndarray  # [n] 1 / group size
    folds: np.ndarray  # [n] fold id
    units: int  # distinct groups
    novel: np.ndarray  # [n] bool: stand-ins for new inputs (group never in probe training)
    novel_groups: int

    @classmethod
    def of(cls, groups: np.ndarray, novel: np.ndarray, folds: int, seed: int) -> SelectorRows:
        uniq, inv = np.unique(groups, return_inverse=True)
        fold_of_group = np.random.default_rng(seed).permutation(len(uniq)) % max(folds, 1)
        novel_groups = len(np.unique(groups[novel]))
        return cls(group_weights(groups), fold_of_group[inv], len(uniq), novel, novel_groups)
