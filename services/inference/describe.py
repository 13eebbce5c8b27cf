"""What a served model looks like to clients: its tensors, metadata and configuration.

Both transports answer from these dicts (REST as JSON, gRPC parsed into the proto), so the
two can never describe a model differently.
"""

from __future__ import annotations

from typing import Any

from gati import __version__, names
from gati.tensors import TensorSpec
from services.inference.served import ServedModel

PLATFORM = "pytorch_staged"
BACKEND = "gati"
OUTPUTS = {  # name -> datatype; each leads with the batch dimension
    names.OUTPUT_SCORES: "FP32",
    names.OUTPUT_LABEL: "INT64",
    names.OUTPUT_HIT: "BOOL",
    names.OUTPUT_EXIT_LAYER: "INT32",
}
DEFAULT_OUTPUTS = (names.OUTPUT_SCORES, names.OUTPUT_LABEL)
# Open Inference Protocol extensions served on both transports (binary tensors: REST only,
# gRPC always carries raw bytes).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")


def input_spec(served: ServedModel) -> TensorSpec:
    spec = served.model.input_spec
    return TensorSpec(names.INPUT_IMAGE, spec.datatype, spec.shape)


def output_shapes(served: ServedModel) -> dict[str, list[int]]:
    """Per-row shape of each output (without the batch dimension)."""
    return {
        names.OUTPUT_SCORES: [served.model.num_classes],
        names.OUTPUT_LABEL: [],
        names.OUTPUT_HIT: [],
        names.OUTPUT_EXIT_LAYER: [],
    }


def server_metadata() -> dict[str, Any]:
    return {"name": "gati", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(served: ServedModel) -> dict[str, Any]:
    spec = input_spec(served)
    shapes = output_shapes(served)
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORM,
        "inputs": [{"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape]}],
        "outputs": [
            {"name": n, "datatype": dt, "shape": [-1, *shapes[n]]} for n, dt in OUTPUTS.items()
        ],
    }


def model_config(served: ServedModel, max_batch: int) -> dict[str, Any]:
    """Triton's ModelConfig: dims without the batch dimension; a per-row scalar is dims [1]
    reshaped to [], as Triton writes it."""
    spec = input_spec(served)
    outputs = []
    for name, datatype in OUTPUTS.items():
        dims = output_shapes(served)[name]
        out: dict[str, Any] = {"name": name, "data_type": f"TYPE_{datatype}", "dims": dims or [1]}
        if not dims:
            out["reshape"] = {"shape": []}
        outputs.append(out)
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "max_batch_size": max_batch,
        "input": [
            {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": list(spec.shape)}
        ],
        "output": outputs,
    }
