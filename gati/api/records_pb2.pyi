from gati.api import cache_pb2 as _cache_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LayerActivation(_message.Message):
    __slots__ = ("layer", "activation")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    activation: _cache_pb2.Tensor
    def __init__(self, layer: _Optional[str] = ..., activation: _Optional[_Union[_cache_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ActivationRecord(_message.Message):
    __slots__ = ("request_id", "model", "time", "activations", "has_base", "base_label", "base_scores", "hit", "exit_layer", "served_label", "bundle_version", "shadow", "row", "lookup_rtt_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_BASE_FIELD_NUMBER: _ClassVar[int]
    BASE_LABEL_FIELD_NUMBER: _ClassVar[int]
    BASE_SCORES_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    SERVED_LABEL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_RTT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    time: float
    activations: _containers.RepeatedCompositeFieldContainer[LayerActivation]
    has_base: bool
    base_label: int
    base_scores: _containers.RepeatedScalarFieldContainer[float]
    hit: bool
    exit_layer: str
    served_label: int
    bundle_version: int
    shadow: bool
    row: int
    lookup_rtt_ms: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., time: _Optional[float] = ..., activations: _Optional[_Iterable[_Union[LayerActivation, _Mapping]]] = ..., has_base: _Optional[bool] = ..., base_label: _Optional[int] = ..., base_scores: _Optional[_Iterable[float]] = ..., hit: _Optional[bool] = ..., exit_layer: _Optional[str] = ..., served_label: _Optional[int] = ..., bundle_version: _Optional[int] = ..., shadow: _Optional[bool] = ..., row: _Optional[int] = ..., lookup_rtt_ms: _Optional[float] = ...) -> None: ...
