"""Every name shared between services, the CLI, the manifests and clients, in one place.

Services, `gati up`, the Kubernetes manifests (checked by a test) and the docs all read
these, so a rename happens here or nowhere.
"""

from __future__ import annotations

# --- Open Inference Protocol: tensors and parameters -------------------------------------
INPUT_IMAGE = "image"  # UINT8 [-1, 32, 32, 3] for the CIFAR ResNets
OUTPUT_SCORES = "scores"  # FP32 [-1, num_classes], the model's logits
OUTPUT_LABEL = "label"  # INT64 [-1], top-1 class
OUTPUT_HIT = "gati_hit"  # BOOL [-1], optional: did this row exit at a cache
OUTPUT_EXIT_LAYER = "gati_exit_layer"  # INT32 [-1], optional: index of the exit cut, -1 = none

PARAM_CACHES = "gati.caches"  # request parameter, bool, default true
PARAM_HIT = "gati.hit"  # response parameter, bool (any row hit)
PARAM_EXIT_LAYER = "gati.exit_layer"  # response parameter, string ("" when no row hit)
PARAM_BUNDLE_VERSION = "gati.bundle_version"  # response parameter, int64 (0 = no bundle)
PARAM_EXACT_HIT = "gati.exact_hit"  # response parameter, bool: served by the exact-match cache

# --- gRPC health service names -------------------------------------------------------------
HEALTH_INFERENCE = "inference.GRPCInferenceService"
HEALTH_CACHE = "gati.v1.CacheService"
HEALTH_TRAINER = "gati.v1.Trainer"
# trailing metadata of a NOT_FOUND GetPlan: a serialized PlanNotFound naming the models held
PLAN_NOT_FOUND_KEY = "gati-plan-not-found-bin"

# --- default ports (gRPC, then Prometheus metrics over HTTP) --------------------------------
INFERENCE_HTTP_PORT = 8000  # Triton's REST (HTTP/JSON) port
INFERENCE_PORT = 8001  # Triton's gRPC port, so clients need no change
INFERENCE_METRICS_PORT = 8002
CACHE_PORT = 8011
CACHE_METRICS_PORT = 8012
TRAINER_PORT = 8021  # health only
TRAINER_METRICS_PORT = 8022

# --- Kafka ---------------------------------------------------------------------------------
ACTIVATIONS_TOPIC = "gati.activations"
TRAINER_GROUP = "gati-trainer"
MAX_RECORD_BYTES = 1_000_000  # Apache Kafka's default message.max.bytes, enforced by gati


# --- Redis ---------------------------------------------------------------------------------
def bundle_key(model: str, version: int) -> str:
    """Redis key holding the bundle bytes of one version (written once, never changed)."""
    return f"gati:bundle:{model}:v{version}"


def bundle_pointer_key(model: str) -> str:
    """Redis key holding the current version number of a model's bundle (the source of truth)."""
    return f"gati:bundle:{model}:current"


def bundle_versions_key(model: str) -> str:
    """Redis sorted set of every published version of a model (score = version)."""
    return f"gati:bundle:{model}:versions"


def bundle_counter_key(model: str) -> str:
    """Redis counter (INCR) that hands out a model's next bundle version; never decreases."""
    return f"gati:bundle:{model}:next"


BUNDLE_MODELS_KEY = "gati:bundle:models"  # Redis set of every model with a published bundle
# A random token written once, with the first bundle ever published to this Redis. If Redis
# loses its data, version numbers start again at 1 under a new token, so a cache service can
# tell a new v1 from the v1 it already holds.
BUNDLE_EPOCH_KEY = "gati:bundles:epoch"
BUNDLE_CHANNEL = "gati:bundles"  # pub/sub: JSON {"model": str, "version": int} on publish

# --- environment variables ------------------------------------------------------------------
ENV_PREFIX = "GATI_"  # every setting of a service reads GATI_<FIELD> (see services/*/config.py)

# Longest request id (UTF-8 bytes) a cache lookup may carry: ids only correlate logs and the
# cache service's per-row state, and a bound keeps that state's memory bounded too.
MAX_REQUEST_ID_BYTES = 256
