"""The inference service's own checks of a plan against the model it serves (issue 14,
finding 7: a bundle resealed with a probe whose width does not fit its cut)."""

from __future__ import annotations

import pytest

from gati.api import cache_pb2
from gati.models.resnet_cifar import build_resnet
from services.inference.plan import check_plan

MODEL = build_resnet("resnet20")
CHANNELS = {cut: shape[0] for cut, shape in MODEL.cut_shapes().items()}


def plan(*layers: tuple[str, str, int], fingerprint: str | None = None) -> cache_pb2.Plan:
    return cache_pb2.Plan(
        model="m",
        bundle_version=3,
        model_fingerprint=MODEL.fingerprint() if fingerprint is None else fingerprint,
        layers=[cache_pb2.LayerPlan(layer=a, reduction=r, input_dim=d) for a, r, d in layers],
        live_labels=True,
    )


def test_a_plan_that_fits_is_used_with_its_stages() -> None:
    active, refusal = check_plan(
        "m", MODEL, CHANNELS, plan(("layer1.0", "pool1", 16), ("layer2.0", "pool2", 128))
    )
    assert refusal is None and active is not None
    assert active.layers == {
        MODEL.cut_index("layer1.0"): ("layer1.0", "pool1"),
        MODEL.cut_index("layer2.0"): ("layer2.0", "pool2"),
    }
    assert active.version == 3 and active.live_labels
    unstated, refusal = check_plan("m", MODEL, CHANNELS, plan(("layer1.0", "pool4", 0)))
    assert refusal is None and unstated is not None  # an older cache service states no width


@pytest.mark.parametrize(
    ("bad", "reason", "says"),
    [
        (plan(("layer1.0", "pool1", 32)), "width", "reads 32 values; this model's cut gives 16"),
        (plan(("layer2.0", "pool4", 128)), "width", "gives 512 at pool4"),
        (plan(("fc", "pool1", 10)), "layer", "unknown layer 'fc'"),
        (plan(("layer1.0", "pool3", 16)), "layer", "reduction 'pool3'"),
        (plan(("layer1.0", "pool1", 16), fingerprint="0" * 32), "fingerprint", "fitted to"),
    ],
)
def test_a_plan_that_does_not_fit_is_refused_with_its_reason(bad, reason: str, says: str) -> None:
    active, refusal = check_plan("m", MODEL, CHANNELS, bad)
    assert active is None and refusal is not None
    assert refusal[0] == reason and says in refusal[1]
