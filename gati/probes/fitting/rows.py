"""`Records`: the rows a fit or an evaluation reads, whoever gathered them.

One row per request, in request order, stacked into arrays: the activations at every cut, the
base model's logits, the request's group, and what else is known of it. `load_records`
(gati.probes.fitting.sources) collects them from the model over images; the trainer stacks
them from Kafka. Not to be confused with gati.records: those are the activation records of
single requests as the inference service puts them on Kafka, before anything is stacked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCE = "pool4"  # the reduction records carry for every cut; coarser ones come from `refine`
POOL4_CELLS = 16  # a pool4 record holds C channels x 4 x 4 cells


@dataclass(frozen=True)
class Records:
    """Activation records in request order, with what is known about each request."""

    acts: dict[str, np.ndarray]  # cut -> [N, C*16] pool4
    logits: np.ndarray  # [N, K] base model
    # [N] the group of each request, whose errors correlate: its image's dataset index
    # offline; live, where no image is named, each request's own index
    groups: np.ndarray
    labels: np.ndarray | None = None  # [N] ground truth (None: unknown, as for live traffic)
    seen: np.ndarray | None = None  # [N] bool: image appeared earlier in the stream
    description: str = ""

    @property
    def channels(self) -> dict[str, int]:
        """cut -> C, the channels of each cut's records."""
        return {cut: a.shape[1] // POOL4_CELLS for cut, a in self.acts.items()}
