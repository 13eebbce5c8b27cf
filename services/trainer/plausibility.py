"""Is a decoded record something the trainer's model could have produced?

`records.decode` checks the wire form; it cannot know the model. A well-formed record can
still carry a label the model has no class for, an activation at a cut the model lacks, or a
channel count that cut does not have. Such a record would teach probes nonsense, or make a
round fail on stacking (one odd shape among thousands), so the trainer refuses it before it
enters the window, counts it by reason and logs the refusals at a bounded rate.

Outcomes (values of `gati_trainer_records_consumed{outcome}`):
- `bad_request_id`: a request id over names.MAX_REQUEST_ID_BYTES (256) UTF-8 bytes;
- `bad_label`: `base_label` or `served_label` outside 0..classes-1 (`served_label` -1, the
  `Record` default for "not stated", is allowed: the trainer never learns from it);
- `bad_scores`: `base_scores` not one score per class;
- `bad_layer`: an activation at a name that is not a cut of the model;
- `bad_shape`: an activation that is not `[C, G, G]` with C the cut's channels and G a grid
  of `gati.probes.serving.reductions` (the height and width on the wire are the reduction's grid,
  not the cut's map: the recorder pools the map first);
- `nonfinite`: NaN or infinity in an activation or in the base scores (`decode` refuses these
  on the wire already; this check also covers records built in process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gati import names
from gati.models import StagedModel
from gati.records import GRID_REDUCTION, Record

BAD_REQUEST_ID, BAD_LABEL, BAD_SCORES, BAD_LAYER, BAD_SHAPE, NONFINITE = (
    "bad_request_id",
    "bad_label",
    "bad_scores",
    "bad_layer",
    "bad_shape",
    "nonfinite",
)
UNSTATED_LABEL = -1  # `Record.served_label` when the producer did not say
MAX_DETAIL_CHARS = 300  # of a refusal's log detail (request ids can be long)


@dataclass(frozen=True)
class Refusal:
    reason: str  # an outcome above
    detail: str  # for the log: what was wrong


@dataclass(frozen=True)
class ModelShape:
    """What a record of this model may hold: its class count and channels per cut."""

    classes: int
    channels: dict[str, int]  # cut name -> channels of its activation

    @classmethod
    def of(cls, model: StagedModel) -> ModelShape:
        """From one dummy forward pass (cuts whose output is not [C, H, W] cannot be recorded)."""
        shapes = model.cut_shapes()
        return cls(model.num_classes, {c: s[0] for c, s in shapes.items() if len(s) == 3})


def check(rec: Record, shape: ModelShape) -> Refusal | None:
    """Why `rec` cannot come from the model `shape` describes; None when it is plausible."""
    return (
        _request_id(rec)
        or _labels(rec, shape.classes)
        or _scores(rec, shape.classes)
        or _activations(rec, shape)
    )


def _request_id(rec: Record) -> Refusal | None:
    """The inference service refuses longer ids, so no record of its carries one; the window
    keys by id, so a long one would cost memory for nothing."""
    size = len(rec.request_id.encode())
    if size > names.MAX_REQUEST_ID_BYTES:
        return Refusal(BAD_REQUEST_ID, f"request id of {size} bytes")
    return None


def _labels(rec: Record, classes: int) -> Refusal | None:
    if rec.base_label is not None and not 0 <= rec.base_label < classes:
        return Refusal(BAD_LABEL, f"base_label {rec.base_label} on a {classes}-class model")
    if rec.served_label != UNSTATED_LABEL and not 0 <= rec.served_label < classes:
        return Refusal(BAD_LABEL, f"served_label {rec.served_label} on a {classes}-class model")
    return None


def _scores(rec: Record, classes: int) -> Refusal | None:
    if rec.base_scores is None:
        return None
    if rec.base_scores.shape != (classes,):
        return Refusal(BAD_SCORES, f"{rec.base_scores.shape} base scores, {classes} classes")
    if not np.isfinite(rec.base_scores).all():
        return Refusal(NONFINITE, "base_scores hold NaN or infinite values")
    return None


def _activations(rec: Record, shape: ModelShape) -> Refusal | None:
    for layer, a in rec.activations.items():
        want = shape.channels.get(layer)
        if want is None:
            return Refusal(BAD_LAYER, f"layer {layer!r} is not a cut of the model")
        if a.ndim != 3 or a.shape[0] != want or a.shape[1] != a.shape[2]:
            return Refusal(BAD_SHAPE, f"layer {layer!r}: shape {a.shape}, cut has {want} channels")
        if a.shape[2] not in GRID_REDUCTION:
            return Refusal(BAD_SHAPE, f"layer {layer!r}: grid {a.shape[2]} is no reduction's")
        if not np.isfinite(a).all():
            return Refusal(NONFINITE, f"layer {layer!r}: NaN or infinite values")
    return None


class RefusalLog:
    """Warns about refused records without flooding: the first of each reason at once, then
    at most one line per reason every `interval_s`, with the count refused since the last."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}  # reason -> when it was last logged
        self._quiet: dict[str, int] = {}  # reason -> refused since then, not yet logged

    def note(self, reason: str, detail: str) -> bool:
        """Count one refusal; log it when due. Returns whether a line was written."""
        now = self.clock()
        count = self._quiet.get(reason, 0) + 1
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._quiet[reason] = count
            return False
        self._last[reason] = now
        self._quiet[reason] = 0
        if len(detail) > MAX_DETAIL_CHARS:  # a record's text is the sender's: bound the line
            detail = detail[:MAX_DETAIL_CHARS] + "..."
        self.logger.warning("refused %d record(s) as %s; latest: %s", count, reason, detail)
        return True
