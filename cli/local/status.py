"""`gati status`: is each process of the local stack alive, is it healthy, how current is it.

Health is what a client would see: grpc.health.v1 for the services, PING (with AUTH) for
Redis, an accepted connection for the broker. Freshness and dead threads come from each
service's Prometheus endpoint, because health alone says "up", not "up to date": the cache's
bundle versions and how long ago it last synced with Redis, the trainer's window and how
long ago a record last reached it, the inference service's plans (and every served model
the cache service has no bundle for, with the names it does hold), and any essential
background thread no longer running (`gati_thread_alive` 0, which also makes health
NOT_SERVING). A value a service does not expose shows as "-". Exit status: 0 when everything
is running and healthy, 1 when something is not, 3 when no stack is recorded in the run
directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.local import state as st
from gati import names
from services.common.tls import ClientTls, channel

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3
HEALTHY = {"SERVING", "PONG", "listening"}


@dataclass
class ProcessStatus:
    name: str
    pid: int | None
    state: str  # running, exited, external
    health: str  # SERVING / NOT_SERVING / PONG / listening / unreachable / ...
    address: str
    metrics: str | None  # Prometheus URL
    log: str | None
    rest: str | None = None  # the inference service's REST (HTTP/JSON) base URL
    # what the metrics say (see `freshness`); empty when not scraped or not a gati service
    freshness: dict[str, Any] = field(default_factory=dict)
    dead_threads: list[str] | None = None  # None: unknown (no metrics endpoint answered)

    @property
    def ok(self) -> bool:
        healthy = self.state in ("running", "external") and self.health in HEALTHY
        return healthy and not self.dead_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=st.DEFAULT_RUN_DIR, help="as given to `gati up`")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write JSON instead of a table, to PATH (none or -: standard output)",
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per health check")


def run(args: argparse.Namespace) -> int:
    run_dir = st.resolve_run_dir(args.run_dir)
    try:
        state = st.load(run_dir)
    except ValueError as exc:
        print(f"gati status: cannot read {st.state_path(run_dir)}: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    if state is None:
        if args.json:
            _write_json(args.json, {"run_dir": str(run_dir), "running": False, "processes": []})
        else:
            print(f"nothing running in {run_dir}")
        return EXIT_NOT_RUNNING
    statuses = collect(state, args.timeout)
    healthy = all(s.ok for s in statuses)
    if args.json:
        _write_json(args.json, as_json(state, statuses))
    else:
        phase = "up" if state.complete else "starting (or an interrupted start)"
        print(f"gati in {run_dir}: {phase}, {'healthy' if healthy else 'NOT healthy'}\n")
        print(render(state, statuses))
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


def _write_json(path: str, payload: dict) -> None:
    text = json.dumps(payload, indent=2)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text + "\n")


def collect(state: st.StackState, timeout: float = 1.0) -> list[ProcessStatus]:
    return [_status(state, record, timeout) for record in state.processes]


def as_json(state: st.StackState, statuses: list[ProcessStatus]) -> dict:
    """Everything `status --json` prints (never the Redis password)."""
    return {
        "run_dir": state.run_dir,
        "running": True,
        "complete": state.complete,
        "healthy": all(s.ok for s in statuses),
        "redis_url": state.redis_url,
        "tls_ca": state.tls["ca"] if state.tls else None,
        "processes": [{**asdict(s), "ok": s.ok} for s in statuses],
    }


def render(state: st.StackState, statuses: list[ProcessStatus]) -> str:
    """Fixed-width tables: one row per process; then, for the services whose metrics
    answered, how current each is and which essential threads are dead."""
    header = ("NAME", "PID", "STATE", "HEALTH", "ENDPOINT", "METRICS", "LOG")
    rows = [
        (
            s.name,
            "-" if s.pid is None else str(s.pid),
            s.state,
            s.health,
            _endpoint(s),
            s.metrics or "-",
            _short_path(s.log) if s.log else "-",
        )
        for s in statuses
    ]
    tables = [_table(header, rows)]
    scraped = [s for s in statuses if s.dead_threads is not None]
    if scraped:
        fresh = [
            (s.name, render_freshness(s.name, s.freshness), ",".join(s.dead_threads or ()) or "-")
            for s in scraped
        ]
        tables.append(_table(("SERVICE", "FRESHNESS", "DEAD THREADS"), fresh))
    if state.tls:
        tables.append(f"TLS: every service; clients verify it with {state.tls['ca']}")
    return "\n\n".join(tables)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def _endpoint(s: ProcessStatus) -> str:
    scheme = {"kafka": "kafka://", "redis": "redis://"}.get(s.name, "grpc://")
    return scheme + s.address + (f", {s.rest}" if s.rest else "")


def _short_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _status(state: st.StackState, record: st.ProcessRecord, timeout: float) -> ProcessStatus:
    proc_state = "running" if st.is_alive(record) else "exited"
    if record.external:
        proc_state = "external"
    health = "-" if proc_state == "exited" else _health(state, record, timeout)
    metrics = record.ports.get("metrics")
    host = record.address.rpartition(":")[0]
    url = f"http://{host}:{metrics}/metrics" if metrics else None
    rest = record.ports.get("http")
    samples = scrape(url, timeout) if url and proc_state != "exited" else None
    return ProcessStatus(
        name=record.name,
        pid=record.pid,
        state=proc_state,
        health=health,
        address=record.address,
        metrics=url,
        log=record.log,
        rest=f"{'https' if state.tls else 'http'}://{host}:{rest}" if rest else None,
        freshness=freshness(record.name, samples) if samples is not None else {},
        dead_threads=dead_threads(samples) if samples is not None else None,
    )


Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value)


def scrape(url: str, timeout: float) -> Samples | None:
    """Every sample of a Prometheus endpoint, or None when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read().decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
    except (OSError, ValueError):  # unreachable, timed out, or not Prometheus text
        return None
    return samples


def freshness(name: str, samples: Samples) -> dict[str, Any]:
    """How current a service is, by what its metrics say; None where a value is not exposed.

    cache: bundle version in use per model, seconds since its last good sync with Redis;
    trainer: labelled records in its window, seconds since a record last reached it;
    inference: the bundle version of each model's plan, and `missing`: each served model the
    cache service said it has no bundle for -> the names it holds (a misnamed publish shows
    here instead of as a silent lack of hits)."""
    if name == "cache":
        return {
            "bundles": _by_model(samples, "gati_cache_bundle_version"),
            "sync_age_seconds": _gauge(samples, "gati_cache_bundle_sync_age_seconds"),
        }
    if name == "trainer":
        window = _gauge(samples, "gati_trainer_window_records")
        return {
            "window_records": None if window is None else int(window),
            "last_record_age_seconds": _gauge(samples, "gati_trainer_last_record_age_seconds"),
        }
    if name == "inference":
        return {
            "plans": _by_model(samples, "gati_cache_plan_bundle_version"),
            "missing": missing_bundles(samples),
        }
    return {}


def missing_bundles(samples: Samples) -> dict[str, list[str]] | None:
    """Served model -> names the cache service holds, for every model it has no bundle for
    (`gati_inference_bundle_missing` 1); None when the service does not export it."""
    flags = samples.get("gati_inference_bundle_missing")
    if flags is None:
        return None
    missing: dict[str, list[str]] = {labels.get("model", ""): [] for labels, v in flags if v == 1}
    for labels, v in samples.get("gati_inference_cache_holds", ()):
        if v == 1 and labels.get("model", "") in missing:
            missing[labels["model"]].append(labels.get("held", ""))
    return {m: sorted(held) for m, held in sorted(missing.items())}


def dead_threads(samples: Samples) -> list[str]:
    """Essential background threads the service reports as no longer running."""
    return sorted(
        labels.get("thread", "?") for labels, v in samples.get("gati_thread_alive", ()) if v == 0
    )


def render_freshness(name: str, fresh: dict[str, Any]) -> str:
    """One table cell: "bundles m v3, synced 1.2s ago", "window 40, last record 3s ago"."""
    if not fresh:
        return "-"
    if name == "cache":
        return f"bundles {_versions(fresh['bundles'])}, synced {_ago(fresh['sync_age_seconds'])}"
    if name == "trainer":
        window = fresh["window_records"]
        last = _ago(fresh["last_record_age_seconds"])
        return f"window {'-' if window is None else window}, last record {last}"
    if name == "inference":
        text = f"plans {_versions(fresh['plans'])}"
        for model, held in (fresh.get("missing") or {}).items():
            text += f"; no bundle for {model} (cache holds: {', '.join(held) or 'none'})"
        return text
    return "-"


def _by_model(samples: Samples, name: str) -> dict[str, int] | None:
    found = samples.get(name)
    if found is None:
        return None
    return {labels.get("model", ""): int(v) for labels, v in found if math.isfinite(v)}


def _gauge(samples: Samples, name: str) -> float | None:
    """The largest (stalest) finite, non-negative value of a gauge; None if there is none
    (a negative value is how a service says "never yet")."""
    values = [v for _, v in samples.get(name, ()) if math.isfinite(v) and v >= 0]
    return max(values) if values else None


def _versions(versions: dict[str, int] | None) -> str:
    if versions is None:
        return "-"
    return ", ".join(f"{m} v{v}" for m, v in sorted(versions.items())) or "none"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f}s ago"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _health(state: st.StackState, record: st.ProcessRecord, timeout: float) -> str:
    if record.check == st.CHECK_GRPC:
        tls = ClientTls(**state.tls) if state.tls else None
        return grpc_health(record.address, record.health_service or "", timeout, tls)
    if record.check == st.CHECK_REDIS:
        url = state.redis_url or f"redis://{record.address}/0"
        return redis_health(url, _password(state), timeout)
    host, _, port = record.address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "listening"
    except OSError:
        return "unreachable"


def grpc_health(address: str, service: str, timeout: float, tls: ClientTls | None = None) -> str:
    """SERVING / NOT_SERVING / SERVICE_UNKNOWN, or the gRPC error code in lower case."""
    with channel(address, tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return "unreachable" if code == grpc.StatusCode.UNAVAILABLE else code.name.lower()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def redis_health(url: str, password: str | None, timeout: float = 1.0) -> str:
    import redis

    client = redis.Redis.from_url(
        url,
        password=password or urlsplit(url).password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        return "PONG" if client.ping() else "no PONG"
    except redis.AuthenticationError:
        return "auth failed"
    except redis.RedisError:
        return "unreachable"
    finally:
        client.close()


def _password(state: st.StackState) -> str | None:
    return state.redis_password or os.environ.get(names.ENV_PREFIX + "REDIS_PASSWORD")
