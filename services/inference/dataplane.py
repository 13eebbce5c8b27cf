"""The one data plane under both transports (gRPC and REST): a transport-neutral inference
call, its validation, the engine, and the accounting (Prometheus and model statistics).

A transport only parses its wire format into an `InferCall` and encodes an `InferReply`
back; both run inside `DataPlane.infer`, so their time is counted as Triton counts it
(compute_input, compute_output) and their errors as failures of the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gati import names
from gati.errors import DeadlineExceeded, GatiError, InvalidArgument
from gati.tensors import decode_input
from services.common.status import status_code
from services.inference import describe
from services.inference.engine import Engine
from services.inference.metrics import InferenceMetrics
from services.inference.served import ServedModel
from services.inference.statistics import Statistics, Timing

T = TypeVar("T")


@dataclass(frozen=True)
class InputTensor:
    """One input as it came: raw little-endian bytes, or typed values (an object with the
    datatype's InferTensorContents field, see gati.tensors), or neither (an error)."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    typed: object | None = None


@dataclass(frozen=True)
class InferCall:
    inputs: Sequence[InputTensor]
    outputs: Sequence[str] = ()  # empty: describe.DEFAULT_OUTPUTS
    caches: bool = True
    request_id: str = ""


@dataclass(frozen=True)
class InferReply:
    model: str
    version: str
    request_id: str
    outputs: list[tuple[str, str, np.ndarray]]  # (name, datatype, array) in requested order
    hit: bool  # any row answered by a learned cache
    exit_layer: str  # the first hit's cut point, "" when none
    bundle_version: int  # 0: no bundle in use
    exact_hit: bool  # any row answered by the exact-match cache

    def parameters(self) -> dict[str, bool | int | str]:
        """The response parameters (names.PARAM_*) both transports send."""
        return {
            names.PARAM_HIT: self.hit,
            names.PARAM_EXIT_LAYER: self.exit_layer,
            names.PARAM_BUNDLE_VERSION: self.bundle_version,
            names.PARAM_EXACT_HIT: self.exact_hit,
        }


@dataclass
class RequestClock:
    """When a request arrived and when a worker took it (perf_counter_ns)."""

    received: int = field(default_factory=time.perf_counter_ns)
    started: int = 0

    def start(self) -> RequestClock:
        self.started = time.perf_counter_ns()
        return self


class DataPlane:
    """`live` and `ready`: what the service's health says (gRPC health is the source), so
    every transport reports the same."""

    def __init__(
        self,
        engine: Engine,
        metrics: InferenceMetrics,
        live: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.statistics = Statistics(engine.models)
        self._live = live
        self._ready = ready

    # --- descriptions ----------------------------------------------------------------------
    def server_live(self) -> bool:
        return self._live()

    def server_ready(self) -> bool:
        return bool(self.engine.models) and self._ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        served = self.engine.models.get(name)
        return served is not None and version in ("", served.version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        return describe.model_metadata(self.engine.get(name, version))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return describe.model_config(self.engine.get(name, version), self.engine.max_batch)

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        return self.statistics.report(name, version)

    # --- the request path ------------------------------------------------------------------
    def infer(
        self,
        model: str,
        version: str,
        parse: Callable[[], InferCall],
        encode: Callable[[InferReply], T],
        clock: RequestClock,
        remaining: Callable[[], float | None] | None = None,
    ) -> T:
        """Parse, check, run and encode one request; `remaining`: seconds left before the
        client's deadline (None: no deadline). Errors are counted, then raised."""
        served = None
        try:
            served = self.engine.get(model, version)
            self.metrics.requests.labels(served.name).inc()
            with self.metrics.latency.labels(served.name).time():
                return self._infer(served, parse, encode, clock, remaining)
        except Exception as exc:
            code = status_code(exc).name if isinstance(exc, GatiError) else "INTERNAL"
            known = model if model in self.engine.models else "(unknown)"
            self.metrics.failures.labels(known, code).inc()
            if served is not None:
                self.statistics.models[served.name].failure(clock.received)
            raise

    def _infer(
        self,
        served: ServedModel,
        parse: Callable[[], InferCall],
        encode: Callable[[InferReply], T],
        clock: RequestClock,
        remaining: Callable[[], float | None] | None,
    ) -> T:
        started = clock.started or clock.received
        call = parse()
        if len(call.request_id.encode()) > names.MAX_REQUEST_ID_BYTES:  # it travels in records
            raise InvalidArgument(
                f"request id is longer than {names.MAX_REQUEST_ID_BYTES} bytes (UTF-8)"
            )
        batch = self._decode(call, served)
        wanted = self._wanted_outputs(call)
        left = remaining() if remaining is not None else None
        if left is not None and left <= 0:
            raise DeadlineExceeded("deadline exceeded before the model ran")
        decoded = time.perf_counter_ns()
        result = self.engine.infer(
            served.name, batch, caches=call.caches, request_id=call.request_id
        )
        inferred = time.perf_counter_ns()
        arrays = {
            names.OUTPUT_SCORES: result.scores,
            names.OUTPUT_LABEL: result.labels,
            names.OUTPUT_HIT: result.hit,
            names.OUTPUT_EXIT_LAYER: result.exit_index,
        }
        reply = InferReply(
            served.name,
            served.version,
            call.request_id,
            [(n, describe.OUTPUTS[n], arrays[n]) for n in wanted],
            bool(result.hit.any()),
            result.exit_layer,
            result.bundle_version,
            result.exact_hits > 0,
        )
        out = encode(reply)
        timing = Timing(clock.received, started, decoded, inferred, time.perf_counter_ns())
        exact_consulted = self.engine.exact is not None and call.caches
        self.statistics.models[served.name].success(timing, result, exact_consulted)
        return out

    def _decode(self, call: InferCall, served: ServedModel) -> np.ndarray:
        spec = describe.input_spec(served)
        if len(call.inputs) != 1 or call.inputs[0].name != spec.name:
            got = [i.name for i in call.inputs]
            raise InvalidArgument(f"expected exactly one input '{spec.name}', got {got}")
        tensor = call.inputs[0]
        return decode_input(
            spec, tensor.datatype, tensor.shape, tensor.raw, tensor.typed, self.engine.max_batch
        )

    @staticmethod
    def _wanted_outputs(call: InferCall) -> list[str]:
        wanted = list(call.outputs) or list(describe.DEFAULT_OUTPUTS)
        unknown = [n for n in wanted if n not in describe.OUTPUTS]
        if unknown:
            raise InvalidArgument(f"unknown outputs {unknown}; available: {list(describe.OUTPUTS)}")
        return wanted
