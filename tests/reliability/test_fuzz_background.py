"""Fuzzed inputs on the paths no gRPC call reaches: Redis and Kafka, against the live stack.

test_bad_inputs.py fuzzes what clients send; this fuzzes what the services read in the
background, with hypothesis, as anyone with write access to Redis or the topic could:
- announcements on the bundle channel (arbitrary bytes, unicode, any JSON, the right keys
  with wrong types, deep nesting, huge strings): the listener parses each and goes on;
- the model's current pointer (garbage, empty, negative, huge, past Python's int digit limit,
  non-UTF-8, numbers in odd forms): refused and counted, the last good bundle stays;
- bundle keys behind the pointer (random bytes, a real bundle truncated, bit-flipped, with a
  wrong checksum or version, resealed with wrong types or unfit tensors): refused and counted
  unless they verify, nothing crashes, what is installed still answers lookups;
- records on the activations topic (random bytes, truncated or corrupted real records,
  well-formed ones with implausible fields: dates far ahead or behind or NaN, labels out of
  range, wrong shapes and dtypes, NaN activations, huge request ids, one over the size limit).
After each batch: the cache service is healthy, answers GetPlan and lookups with the last good
bundle, its threads are alive (`gati_thread_alive` where exported; the bundle channel still
has its subscriber) and it picks up a fresh good bundle both when announced and, unannounced,
by its timer; the trainer consumed the batch, counted what it refused, and then still takes
good records into its window. Refusal reasons that other work is still settling (fitness of
bundles, plausibility of records) are counted and printed, not asserted by name.

Each path runs 60-100 examples, derandomized and without a database, so CI runs the same
inputs every time; no shrinking (each example costs a round trip to a live service), the
failing input is printed as hypothesis found it.
"""

from __future__ import annotations

import json
import math
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import count

import grpc
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from safetensors.numpy import save

from gati import names, records
from gati.api import cache_pb2, cache_pb2_grpc, records_pb2
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.bundle import MAGIC, Bundle, compute_checksum
from gati.store import Announcement
from services.cache.refresher import load_runtime
from tests.reliability.figures import Figures
from tests.reliability.load import wait_until
from tests.reliability.rig import LAYERS, MODEL, TRAINER_ARGS, LookupStream, Rig, lookup_request

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,  # nothing written into the repository
    derandomize=True,  # the same inputs on every run
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
SEEDS = count(1400)  # of the good bundles published here
CHANNEL = names.BUNDLE_CHANNEL
POINTER = names.bundle_pointer_key(MODEL)
WAIT_S = 20.0  # for one refusal to be counted: a sync is woken at once, the timer is 0.5 s
WINDOW_CAP = int(TRAINER_ARGS[TRAINER_ARGS.index("--window-records") + 1])
GOOD_RECORDS = 25
ACCEPTED = {"labelled", "unlabelled", "duplicate"}  # trainer outcomes that are not refusals


# --- looking at the stack -------------------------------------------------------------------
@pytest.fixture(scope="module")
def r(rig: Rig) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(rig.stack.redis_url, socket_timeout=10)
    yield client
    client.close()


def refused(rig: Rig) -> Counter[str]:
    """Bundles the cache service refused so far, by reason."""
    by = rig.metrics("cache").by("gati_cache_bundles_refused_total", "reason")
    return Counter({k: int(v) for k, v in by.items()})


def consumed(rig: Rig) -> Counter[str]:
    """Records the trainer read so far, by outcome."""
    by = rig.metrics("trainer").by("gati_trainer_records_consumed_total", "outcome")
    return Counter({k: int(v) for k, v in by.items()})


def quiet(rig: Rig, still_s: float = 1.0) -> None:
    """Wait until the trainer's counts stood still for `still_s` (nothing left to read)."""
    last = (sum(consumed(rig).values()), time.monotonic())

    def still() -> bool:
        nonlocal last
        total = sum(consumed(rig).values())
        if total != last[0]:
            last = (total, time.monotonic())
        return time.monotonic() - last[1] >= still_s

    wait_until(still, 30, "the trainer done with earlier records")


def since(now: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: v - before.get(k, 0) for k, v in now.items() if v > before.get(k, 0)})


def plan(rig: Rig) -> cache_pb2.Plan:
    with grpc.insecure_channel(f"127.0.0.1:{rig.stack.cache_port}") as channel:
        return cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
            cache_pb2.PlanRequest(model=MODEL), timeout=5
        )


def lookups(rig: Rig, version: int) -> list[cache_pb2.LookupReply]:
    """One lookup per active layer of the plan, on a fresh stream (zeros: any answer will do)."""
    p = plan(rig)
    assert p.bundle_version == version, f"plan says v{p.bundle_version}, expected v{version}"
    assert p.layers, "the plan has no active layer to look up"
    replies = []
    with grpc.insecure_channel(f"127.0.0.1:{rig.stack.cache_port}") as channel:
        stream = LookupStream(channel, timeout_s=30)
        try:
            for seq, lp in enumerate(p.layers):
                if lp.layer in LAYERS:  # a cut the suite's lookups know the width of
                    request = lookup_request(lp.layer, lp.reduction, seq, f"fuzz-{seq}")
                    replies.append(stream.ask(request))
        finally:
            stream.end()
    return replies


def threads_alive(rig: Rig, service: str, figures: Figures) -> dict[str, float]:
    """`gati_thread_alive` of a service ({} where it exports none), into the figures."""
    alive = rig.metrics(service).by("gati_thread_alive", "thread")
    for thread, value in alive.items():
        figures.threads_alive[f"{service} {thread}"] = value == 1
    return alive


def subscribers(r: redis.Redis) -> int:
    """Clients subscribed to the bundle channel: the cache service's listener (only it)."""
    return int(dict(r.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0))


def cache_serves(rig: Rig, r: redis.Redis, version: int, figures: Figures) -> None:
    """Healthy, bundle `version` in use end to end, lookups answered, threads alive."""
    assert rig.proc("cache").alive(), rig.proc("cache").log_tail()
    assert rig.healthy("cache")
    for reply in lookups(rig, version):
        assert reply.error == "" and reply.bundle_version == version, reply
    answer = rig.ask(caches=True)
    assert answer.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version
    alive = threads_alive(rig, "cache", figures)
    assert all(v == 1 for v in alive.values()), alive
    listening = subscribers(r) >= 1
    figures.threads_alive["cache listener subscribed"] = listening
    assert listening, "nobody is subscribed to the bundle channel: the listener is gone"


def next_version(r: redis.Redis) -> int:
    top = r.zrevrange(names.bundle_versions_key(MODEL), 0, 0, withscores=True)
    return int(top[0][1]) + 1 if top else 1


def plant(r: redis.Redis, version: int, data: bytes, announce: bool = True) -> None:
    """Store `data` as `version` of the model and point at it; announce it unless told not."""
    r.set(names.bundle_key(MODEL, version), data)
    r.zadd(names.bundle_versions_key(MODEL), {str(version): version})
    r.sadd(names.BUNDLE_MODELS_KEY, MODEL)
    r.set(POINTER, version)
    if announce:
        r.publish(CHANNEL, Announcement(MODEL, version).to_json())


def good_bundle(rig: Rig) -> Bundle:
    return random_bundle(
        LAYERS, model_id=MODEL, fingerprint=rig.fingerprint, threshold=0.0, seed=next(SEEDS)
    )


def fresh_good(rig: Rig) -> int:
    """A good bundle published (announced) and in use; its version."""
    version = rig.publish(seed=next(SEEDS))
    rig.wait_version(version)
    return version


def follows(rig: Rig, r: redis.Redis, figures: Figures) -> tuple[float, float]:
    """A fresh good bundle is picked up when announced, and another one, planted without an
    announcement, by the timer alone (the sync thread's own loop). Seconds each took."""
    announced = rig.publish(seed=next(SEEDS))
    by_announcement = rig.wait_version(announced)
    unannounced = next_version(r)
    plant(r, unannounced, good_bundle(rig).with_version(unannounced).to_bytes(), announce=False)
    by_timer = wait_until(
        lambda: plan(rig).bundle_version == unannounced, 30, f"v{unannounced} by the timer"
    )
    rig.wait_version(unannounced)
    figures.threads_alive["cache bundle sync (timer pickup)"] = True
    return by_announcement, by_timer


def log_count(rig: Rig, service: str, text: str) -> int:
    return rig.proc(service).log_path.read_text(errors="replace").count(text)


def huge(pattern: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    """A long string from a short drawn one (hypothesis itself draws at most a few KB)."""
    return st.builds(lambda s, n: (s or "x") * n, pattern, st.integers(low, high))


# --- announcements ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
wrong_models = st.one_of(
    st.just(MODEL), st.text(max_size=20), st.integers(), st.none(), st.booleans(), json_values
)
wrong_versions = st.one_of(
    st.integers(-(2**70), 2**70), st.booleans(), st.floats(), st.text(max_size=6), json_values
)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()  # NaN and Infinity as JavaScript writes them


announcements = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=200).map(str.encode),
    json_values.map(_dumps),
    st.fixed_dictionaries({"model": wrong_models, "version": wrong_versions}).map(_dumps),
    st.fixed_dictionaries({}, optional={"model": wrong_models, "version": wrong_versions}).map(
        _dumps
    ),
    st.builds(
        lambda opener, n: opener * n,
        st.sampled_from([b"[", b'{"a":', b'{"model":[']),
        st.integers(1000, 100_000),
    ),
    huge(st.text(max_size=4), 1000, 100_000).map(lambda s: _dumps({"model": s, "version": 1})),
    huge(st.text(max_size=4), 1000, 100_000).map(str.encode),
)


def test_fuzzed_announcements(rig: Rig, r: redis.Redis, figures: Figures) -> None:
    good = fresh_good(rig)
    refused_before = refused(rig)
    logged_before = log_count(rig, "cache", "malformed bundle announcement")
    sent: Counter[str] = Counter()

    @example(b"[" * 200_000)  # RecursionError in the parser
    @example(b'{"model": "cifar", "version": ' + b"9" * 5000 + b"}")  # past the int digit limit
    @example(b'{"model": "cifar", "version": 1e400}')
    @example(b'{"model": "cifar", "version": NaN}')
    @example(b'{"model": "cifar", "version": true}')
    @example(b'{"model": "\xff\xfe", "version": 1}')
    @example(b'{"model": "cifar", "version": 1}\x00')
    @example(b"\x00" * 1000)
    @example(b"")
    @example(_dumps({"model": "x" * 1_000_000, "version": 1}))
    @example(_dumps({"model": MODEL, "version": -(2**63)}))
    @given(announcements)
    @settings(SETTINGS, max_examples=100)
    def announce(data: bytes) -> None:
        receivers = r.publish(CHANNEL, data)
        sent["malformed" if Announcement.parse(data) is None else "well-formed"] += 1
        assert receivers >= 1, "no subscriber got the announcement: the listener is gone"

    announce()
    # A marker after the batch: once it is logged, the listener has read everything before it.
    marker = f"fuzz-end-{uuid.uuid4().hex}"
    assert r.publish(CHANNEL, marker) >= 1
    sent["malformed"] += 1
    try:
        wait_until(lambda: marker in rig.proc("cache").log_tail(50), WAIT_S, "the marker read")
        read_through = True
    except TimeoutError:  # its logging may be rate-limited: the checks below still hold
        read_through = False
    logged = log_count(rig, "cache", "malformed bundle announcement") - logged_before
    total = sum(sent.values())
    figures.background["announcements"] += total
    figures.background_refused["cache announcement ignored (logged)"] += logged
    # an announcement only wakes a sync: the pointer did not move, so nothing was refused
    assert since(refused(rig), refused_before) == Counter()
    assert plan(rig).bundle_version == good
    cache_serves(rig, r, good, figures)
    by_announcement, by_timer = follows(rig, r, figures)
    print(
        f"\nannouncements: {total} published ({sent['malformed']} malformed, "
        f"{logged} logged as such, the last one read: {read_through}); "
        f"v{good} kept; next bundle in use {by_announcement:.2f} s after its announcement, "
        f"an unannounced one {by_timer:.2f} s after it was planted"
    )
    assert logged >= 1  # the malformed ones reached the listener and were logged


# --- the current pointer --------------------------------------------------------------------------
GOOD_FORMS = ("{}", " {}", "{}\n", "+{}", "0{}", "\t{} ")  # the good version, oddly written


def _int(raw: bytes) -> int | None:
    """What the pointer means as a version, as Python reads an integer (None: garbage)."""
    try:
        return int(raw)
    except ValueError:
        return None


ODD_POINTERS = [
    b"", b" ", b"nan", b"inf", b"-inf", b"1e9", b"1.0", b"0x10", b"+", b"-", b"\x00", b"1\x00",
    b"true", b"null", b"[]", b'{"version": 1}', "٣".encode(), "1٣".encode(),
]  # fmt: skip
pointers = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
    st.integers(-(2**63), -1).map(lambda v: str(v).encode()),
    st.integers(10**6, 2**200).map(lambda v: str(v).encode()),
    st.integers(4301, 20_000).map(lambda n: b"7" * n),  # past the int digit limit
    st.sampled_from(ODD_POINTERS),
    st.builds(
        lambda v, form: form.format(v).encode(),
        st.integers(10**6, 10**12),
        st.sampled_from(GOOD_FORMS),
    ),
    st.sampled_from(GOOD_FORMS),  # a str: filled with the good version below
)


def test_fuzzed_pointers(rig: Rig, r: redis.Redis, figures: Figures) -> None:
    good = fresh_good(rig)
    stored = {int(v) for v in r.zrange(names.bundle_versions_key(MODEL), 0, -1)}
    wake = Announcement(MODEL, good).to_json()
    refused_before = refused(rig)
    seen: set[tuple[str, object]] = set()
    tried: Counter[str] = Counter()

    @example(b"nan")
    @example(b"1e9")
    @example(b"0x10")
    @example(b"-1")
    @example(b"0")
    @example(b"8" * 4300)  # the most digits Python reads: a huge, missing version
    @example(b"9" * 4301)  # one more: garbage
    @example(b"-" + b"6" * 1_000_000)
    @example(b"\xff\xfe\xfd")
    @given(pointers)
    @settings(SETTINGS, max_examples=60)
    def point(value: bytes | str) -> None:
        raw = value.format(good).encode() if isinstance(value, str) else value
        version = _int(raw)
        if version is not None and version != good:
            assume(version not in stored)  # a published version: a rollback, not garbage
        key = ("int", version) if version is not None else ("raw", raw[:40])
        assume(key not in seen)  # a repeat of a refused value is not counted again
        seen.add(key)
        before = sum(refused(rig).values())
        r.set(POINTER, raw)
        r.publish(CHANNEL, wake)  # sync now rather than at the next tick
        if version == good:
            tried["good version, odd form"] += 1  # followed, or refused: no claim either way
        else:
            tried["garbage" if version is None else "missing version"] += 1
            wait_until(
                lambda: sum(refused(rig).values()) > before, WAIT_S, f"pointer {raw[:60]!r} refused"
            )
        assert plan(rig).bundle_version == good  # the last good bundle stays

    try:
        point()
    finally:
        r.set(POINTER, good)  # an operator's repair (publish cannot move some garbage: see below)
    reasons = since(refused(rig), refused_before)
    figures.background["pointers"] += sum(tried.values())
    figures.background_refused.update({f"cache {k}": v for k, v in reasons.items()})
    cache_serves(rig, r, good, figures)
    by_announcement, by_timer = follows(rig, r, figures)
    print(
        f"\npointers: {dict(tried)}; refused {dict(reasons)}; v{good} kept throughout; "
        f"next bundle in use {by_announcement:.2f} s after its announcement, "
        f"an unannounced one {by_timer:.2f} s after it was planted"
    )
    assert sum(reasons.values()) >= tried["garbage"] + tried["missing version"]


@pytest.mark.parametrize("garbage", [b"nan", b"inf", b"1e9", b"0x10", b"-3", b"abc"])
def test_publish_replaces_a_garbage_pointer(rig: Rig, r: redis.Redis, garbage: bytes) -> None:
    good = fresh_good(rig)
    r.set(POINTER, garbage)
    try:
        version = rig.publish(seed=next(SEEDS))
        assert r.get(POINTER) == str(version).encode(), "publish left the garbage pointer"
    finally:
        r.set(POINTER, good)
        rig.wait_version(fresh_good(rig))


# --- bundle keys -------------------------------------------------------------------------------
Recipe = tuple  # (kind, *parameters): turned into bytes for a version by `_bundle_bytes`

MANIFEST_FIELDS = (
    "format", "format_version", "model", "model_fingerprint", "version", "layers",
    "num_classes", "candidates", "created", "agreement_target", "checksum",
)  # fmt: skip
ENTRY_FIELDS = (
    "layer", "variant", "reduction", "channels", "input_dim", "tensors", "threshold", "prefix",
)  # fmt: skip
sealable = st.recursive(  # JSON a manifest may hold (no NaN: canonical JSON refuses it)
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
fractions = st.floats(0, 1, exclude_max=True)
bundle_recipes = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=2048)),
    st.tuples(st.just("magic"), st.binary(max_size=512)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.binary(max_size=64)),
    st.tuples(st.just("truncated"), fractions),
    st.tuples(
        st.just("flipped"),
        st.lists(st.tuples(fractions, st.integers(1, 255)), min_size=1, max_size=4),
    ),
    st.tuples(st.just("checksum"), st.one_of(sealable, st.text(alphabet="0123456789abcdef"))),
    st.tuples(st.just("version"), st.integers(-3, 3).filter(bool)),
    st.tuples(st.just("manifest"), st.sampled_from(MANIFEST_FIELDS), sealable),
    st.tuples(st.just("entry"), st.sampled_from(ENTRY_FIELDS), sealable),
    st.tuples(st.just("tensor values"), st.sampled_from(["nan", "inf", "huge", "zero"])),
    st.tuples(st.just("tensor shape"), st.integers(1, 64)),
    st.tuples(st.just("tensors section"), st.binary(max_size=512)),
)


def _framed(manifest: dict) -> bytes:
    body = json.dumps(manifest, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(body)) + body


def _resealed(manifest: dict, tensors: dict[str, np.ndarray]) -> bytes:
    manifest["checksum"] = compute_checksum(manifest, tensors)
    return _framed(manifest) + save(tensors)


def _bundle_bytes(recipe: Recipe, bundle: Bundle, version: int) -> bytes:
    """Bytes to store as `version`: a good bundle of that version, broken as `recipe` says."""
    kind, *args = recipe
    real = bundle.with_version(version)
    data = real.to_bytes()
    manifest = json.loads(json.dumps(real.manifest))
    tensors = dict(real.tensors)
    if kind == "random":
        return args[0]
    if kind == "magic":
        return MAGIC + args[0]
    if kind == "length":
        return MAGIC + struct.pack("<Q", args[0]) + args[1]
    if kind == "truncated":
        return data[: int(args[0] * len(data))]
    if kind == "flipped":
        out = bytearray(data)
        for where, mask in args[0]:
            out[int(where * len(out))] ^= mask
        return bytes(out)
    if kind == "checksum":
        manifest["checksum"] = args[0] if not isinstance(args[0], str) else "sha256:" + args[0]
        return _framed(manifest) + save(tensors)
    if kind == "version":
        return bundle.with_version(max(0, version + args[0])).to_bytes()
    if kind == "manifest":
        manifest[args[0]] = args[1]
        return _resealed(manifest, tensors)
    if kind == "entry":
        manifest["layers"][0][args[0]] = args[1]
        return _resealed(manifest, tensors)
    if kind == "tensor values":
        name = sorted(tensors)[0]
        t = tensors[name].astype(np.float32)
        fill = {"nan": np.nan, "inf": np.inf, "huge": 3e38, "zero": 0.0}[args[0]]
        t.flat[0] = fill
        tensors[name] = t.astype(tensors[name].dtype)
        return _resealed(manifest, tensors)
    if kind == "tensor shape":  # a weight of another width, declared as such: sealed, unfit
        entry = manifest["layers"][0]
        name = next(n for n in entry["tensors"] if n.endswith("w"))
        w = np.zeros((tensors[name].shape[0], args[0]), tensors[name].dtype)
        tensors[name] = w
        entry["tensors"][name] = {"dtype": w.dtype.name, "shape": list(w.shape)}
        return _resealed(manifest, tensors)
    assert kind == "tensors section"
    return _framed(manifest) + args[0]


def _verifies(data: bytes, version: int) -> bool:
    """Would the cache service's own check take these bytes (this checkout's code)?"""
    try:
        load_runtime(data, version)
    except Exception:
        return False
    return True


def test_fuzzed_bundle_keys(rig: Rig, r: redis.Redis, figures: Figures) -> None:
    in_use = fresh_good(rig)
    base = good_bundle(rig)
    refused_before = refused(rig)
    tried: Counter[str] = Counter()
    installed: list[str] = []

    @example(("truncated", 0.0))
    @example(("truncated", 0.5))
    @example(("length", 2**64 - 1, b"{}"))
    @example(("checksum", "0" * 64))
    @example(("version", 1))
    @example(("manifest", "layers", 5))  # a TypeError, not a BundleError, deep in verify
    @example(("entry", "tensors", []))
    @example(("tensor values", "nan"))
    @example(("tensor shape", 7))
    @given(bundle_recipes)
    @settings(SETTINGS, max_examples=60)
    def store(recipe: Recipe) -> None:
        nonlocal in_use
        version = next_version(r)
        data = _bundle_bytes(recipe, base, version)
        verifies = _verifies(data, version)
        tried[recipe[0]] += 1
        before = sum(refused(rig).values())
        plant(r, version, data)

        def settled() -> bool:  # refused, or (bytes that verify) installed
            taken = verifies and plan(rig).bundle_version == version
            return taken or sum(refused(rig).values()) > before

        wait_until(settled, WAIT_S, f"v{version} ({recipe[0]}) refused or installed")
        if plan(rig).bundle_version == version:  # it verified: it must serve, not crash
            installed.append(recipe[0])
            in_use = version
            for reply in lookups(rig, version):
                assert not reply.error.startswith("internal"), (recipe, reply.error)
        assert plan(rig).bundle_version == in_use  # otherwise the last good bundle stays

    store()
    reasons = since(refused(rig), refused_before)
    figures.background["bundle keys"] += sum(tried.values())
    figures.background_refused.update({f"cache {k}": v for k, v in reasons.items()})
    announced = fresh_good(rig)  # the pointer moves on past every planted version
    cache_serves(rig, r, announced, figures)
    by_announcement, by_timer = follows(rig, r, figures)
    print(
        f"\nbundle keys: {sum(tried.values())} planted {dict(tried)}; refused {dict(reasons)}; "
        f"installed (they verify) {Counter(installed)}; next bundle in use "
        f"{by_announcement:.2f} s after its announcement, an unannounced one {by_timer:.2f} s"
    )
    assert sum(reasons.values()) + len(installed) >= sum(tried.values())


# --- records ---------------------------------------------------------------------------------
NAN, INF = math.nan, math.inf
GRIDS = sorted(records.GRID_REDUCTION)
int32 = st.integers(-(2**31), 2**31 - 1)
TIME_OFFSETS = [0, -1, 299, 301, 1e9, -1e9]  # seconds from now
ODD_TIMES = [0.0, -1.0, NAN, INF, -INF, 1e308, -1e308]
LAYER_NAMES = [*LAYERS, "layer9.9", "", "conv1", "fc", "layer1.1\x00"]


def good_record(request_id: str, when: float | None = None, seed: int = 0) -> bytes:
    """A record the trainer must take: labelled, the model's cuts and class count, now."""
    rng = np.random.default_rng(seed)
    rec = records.Record(
        MODEL,
        request_id,
        0,
        time.time() if when is None else when,
        {
            layer: records.to_wire(rng.normal(size=channels).astype(np.float32), channels)
            for layer, (_, channels) in LAYERS.items()
        },  # [C, 1, 1]: pool1
        base_label=int(rng.integers(10)),
        base_scores=rng.normal(size=10).astype(np.float32),
    )
    return records.encode(rec)


@st.composite
def activation(draw: st.DrawFn, layer: str) -> cache_pb2.Tensor:
    channels = LAYERS.get(layer, ("", 16))[1]
    dtype = draw(st.sampled_from(["float16", "float16", "float32", "float64", "int8", ""]))
    g = draw(st.sampled_from(GRIDS))
    shape = draw(
        st.one_of(
            st.just([channels, g, g]),
            st.sampled_from([1, channels - 1, channels + 1, 2 * channels, 10_000]).map(
                lambda c: [c, g, g]
            ),
            st.sampled_from([[channels, g, g + 1], [channels, 3, 3], [channels * g * g], []]),
            st.lists(st.integers(-3, 70) | st.sampled_from([2**31, 2**40, -(2**62)]), max_size=4),
        )
    )
    n = math.prod(shape) if all(0 <= s <= 10_000 for s in shape) else None
    fill = draw(st.sampled_from(["normal", "normal", "nan", "inf", "huge", "short", "long", "any"]))
    if n is None or n > 50_000 or fill == "any":
        return cache_pb2.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=256)))
    a = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=n).astype(np.float32)
    if n and fill in ("nan", "inf", "huge"):
        a[draw(st.integers(0, n - 1))] = {"nan": NAN, "inf": INF, "huge": 1e30}[fill]
    with np.errstate(over="ignore"):  # 1e30 in float16 is inf: one more bad value
        data = a.astype("<f4" if dtype == "float32" else "<f2").tobytes()
    if fill == "short":
        data = data[:-1]
    elif fill == "long":
        data += b"\0\0"
    return cache_pb2.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def implausible(draw: st.DrawFn) -> bytes:
    """A well-formed ActivationRecord whose fields may be anything a protobuf allows."""
    now = time.time()
    msg = records_pb2.ActivationRecord(
        request_id=draw(
            st.one_of(st.text(max_size=24), huge(st.text(min_size=1, max_size=3), 1000, 100_000))
        ),
        model=draw(st.one_of(st.just(MODEL), st.just(MODEL), st.text(max_size=12))),
        time=draw(
            st.one_of(
                st.sampled_from([now + dt for dt in TIME_OFFSETS] + ODD_TIMES),
                st.floats(),
            )
        ),
        has_base=draw(st.booleans()),
        base_label=draw(st.one_of(st.integers(-2, 12), int32)),
        hit=draw(st.booleans()),
        exit_layer=draw(st.one_of(st.sampled_from(LAYER_NAMES), st.text(max_size=8))),
        served_label=draw(st.one_of(st.integers(-2, 12), int32)),
        bundle_version=draw(st.integers(-(2**63), 2**63 - 1)),
        shadow=draw(st.booleans()),
        row=draw(int32),
        lookup_rtt_ms=draw(st.floats(width=32)),
    )
    msg.base_scores.extend(
        draw(
            st.one_of(
                st.lists(st.floats(width=32), max_size=12),
                st.lists(st.floats(-10, 10, width=32), min_size=10, max_size=10),
                st.integers(0, 5000).map(lambda n: [0.5] * n),
            )
        )
    )
    for layer in draw(st.lists(st.sampled_from(LAYER_NAMES) | st.text(max_size=8), max_size=3)):
        msg.activations.append(
            records_pb2.LayerActivation(layer=layer, activation=draw(activation(layer)))
        )
    return msg.SerializeToString()


@st.composite
def near_miss(draw: st.DrawFn) -> bytes:
    """A good record's bytes, cut short or with a few bytes changed."""
    data = good_record(draw(st.text(min_size=1, max_size=12)), seed=draw(st.integers(0, 99)))
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


record_values = st.one_of(st.binary(max_size=1024), near_miss(), implausible(), implausible())


def test_fuzzed_records(rig: Rig, figures: Figures) -> None:
    producer = KafkaProducer(
        bootstrap_servers=rig.stack.kafka_bootstrap,
        acks=1,
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=4 << 20,  # the one over gati's limit must leave
    )
    quiet(rig)  # records of earlier tests' load absorbed: the counts below are this test's
    before = consumed(rig)
    decodes: Counter[str] = Counter()

    def send(value: bytes) -> None:
        producer.send(names.ACTIVATIONS_TOPIC, key=MODEL.encode(), value=value)
        try:
            records.decode(value)
        except records.RecordError:
            decodes["malformed"] += 1
        else:
            decodes["decodes"] += 1

    @example(b"")
    @example(b"\x0a\xff\xff\xff\xff\x0f")  # a length prefix far past the end
    @example(good_record("fuzz-nan-time", when=NAN))
    @example(good_record("fuzz-far-future", when=time.time() + 1e9))
    @example(good_record("fuzz-epoch", when=0.0))
    @given(record_values)
    @settings(SETTINGS, max_examples=100)
    def produce(value: bytes) -> None:
        send(value)

    try:
        produce()
        oversize = records_pb2.ActivationRecord(
            request_id="x" * names.MAX_RECORD_BYTES, model=MODEL, time=time.time()
        )
        send(oversize.SerializeToString())  # well-formed, over gati's size limit
        producer.flush(30)
        fuzzed = sum(decodes.values())
        wait_until(
            lambda: sum(since(consumed(rig), before).values()) >= fuzzed,
            60,
            f"the trainer reading the {fuzzed} fuzzed records",
        )
        mid = consumed(rig)
        window_mid = rig.metrics("trainer").get("gati_trainer_window_records")
        tag = uuid.uuid4().hex[:8]
        for i in range(GOOD_RECORDS):
            producer.send(
                names.ACTIVATIONS_TOPIC,
                key=MODEL.encode(),
                value=good_record(f"fuzz-good-{tag}-{i}", seed=i),
            )
        producer.flush(30)
    finally:
        producer.close()
    took = wait_until(
        lambda: since(consumed(rig), mid)["labelled"] >= GOOD_RECORDS,
        60,
        f"the trainer taking {GOOD_RECORDS} good records after the fuzz",
    )
    outcomes = since(mid, before)
    refusals = Counter({k: v for k, v in outcomes.items() if k not in ACCEPTED})
    window = rig.metrics("trainer").get("gati_trainer_window_records")
    figures.background["records"] += fuzzed
    figures.background_refused.update({f"trainer {k}": v for k, v in refusals.items()})
    alive = threads_alive(rig, "trainer", figures)
    print(
        f"\nrecords: {fuzzed} fuzzed ({decodes['malformed']} malformed on the wire), trainer "
        f"outcomes {dict(outcomes)}; {GOOD_RECORDS} good ones after: labelled in {took:.1f} s, "
        f"window {window_mid:.0f} -> {window:.0f} (cap {WINDOW_CAP})"
    )
    assert rig.proc("trainer").alive(), rig.proc("trainer").log_tail()
    assert rig.healthy("trainer")
    assert all(v == 1 for v in alive.values()), alive
    # every record bad on the wire is refused (under whatever name), none taken as labelled
    assert sum(refusals.values()) >= decodes["malformed"]
    assert sum(outcomes.values()) >= fuzzed
    # the good ones went into the window: nothing pushed them out or wedged the loop
    assert window >= min(window_mid + GOOD_RECORDS, WINDOW_CAP)
