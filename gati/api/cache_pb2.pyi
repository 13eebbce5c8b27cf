from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("seq", "request_id", "model", "layer", "activation", "bundle_version", "rows", "labels")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    model: str
    layer: str
    activation: Tensor
    bundle_version: int
    rows: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., layer: _Optional[str] = ..., activation: _Optional[_Union[Tensor, _Mapping]] = ..., bundle_version: _Optional[int] = ..., rows: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupReply(_message.Message):
    __slots__ = ("seq", "request_id", "layer", "hit", "label", "confidence", "bundle_version", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    layer: str
    hit: _containers.RepeatedScalarFieldContainer[bool]
    label: _containers.RepeatedScalarFieldContainer[int]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    bundle_version: int
    error: str
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ..., layer: _Optional[str] = ..., hit: _Optional[_Iterable[bool]] = ..., label: _Optional[_Iterable[int]] = ..., confidence: _Optional[_Iterable[float]] = ..., bundle_version: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("model", "model_fingerprint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_fingerprint: str
    def __init__(self, model: _Optional[str] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class PlanNotFound(_message.Message):
    __slots__ = ("held_models",)
    HELD_MODELS_FIELD_NUMBER: _ClassVar[int]
    held_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, held_models: _Optional[_Iterable[str]] = ...) -> None: ...

class LayerPlan(_message.Message):
    __slots__ = ("layer", "reduction", "input_dim")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    layer: str
    reduction: str
    input_dim: int
    def __init__(self, layer: _Optional[str] = ..., reduction: _Optional[str] = ..., input_dim: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("model", "bundle_version", "model_fingerprint", "layers", "live_labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LIVE_LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    bundle_version: int
    model_fingerprint: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerPlan]
    live_labels: bool
    def __init__(self, model: _Optional[str] = ..., bundle_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerPlan, _Mapping]]] = ..., live_labels: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "bundle_version", "active_layers", "lookups", "hits")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    bundle_version: int
    active_layers: _containers.RepeatedScalarFieldContainer[str]
    lookups: int
    hits: int
    def __init__(self, model: _Optional[str] = ..., bundle_version: _Optional[int] = ..., active_layers: _Optional[_Iterable[str]] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("models", "bundles_refused", "reloads")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    bundles_refused: int
    reloads: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., bundles_refused: _Optional[int] = ..., reloads: _Optional[int] = ...) -> None: ...
