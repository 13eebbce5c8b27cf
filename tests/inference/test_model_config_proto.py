"""gati's model_config.proto is a field-for-field subset of Triton's, so the stock
tritonclient.grpc reads gati's ModelConfig answers unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

DUMP = """
import json, sys
from importlib import import_module
module = import_module(sys.argv[1])
def walk(d, p):
    out = {p + '.' + f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        out.update(walk(n, p + '.' + n.name))
    for e in d.enum_types:
        out.update({p + '.' + e.name + '.' + v.name: v.number for v in e.values})
    return out
r = {}
for n, d in module.DESCRIPTOR.message_types_by_name.items():
    r.update(walk(d, n))
for n, e in module.DESCRIPTOR.enum_types_by_name.items():
    r.update({n + '.' + v.name: v.number for v in e.values})
print(json.dumps(r))
"""


def dump(module: str) -> dict:
    """Each field and enum value of a generated module, from a fresh interpreter (Triton's
    and gati's `inference` protos cannot share one descriptor pool)."""
    run = subprocess.run(
        [sys.executable, "-c", DUMP, module], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_model_config_matches_tritons_numbers() -> None:
    triton = dump("tritonclient.grpc.model_config_pb2")
    ours = dump("gati.api.model_config_pb2")
    assert {"ModelConfig.max_batch_size", "ModelOutput.reshape", "DataType.TYPE_FP32"} <= set(ours)
    for key, value in ours.items():
        assert triton.get(key) == value, key
