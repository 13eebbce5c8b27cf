"""CPU affinity: which cores a service (or one of its processes) may run on.

Why: on a small machine the model's thread must own a core. Measured on the 2-core machine
(docs/serving.md, "Where a lookup's time goes"): when the lookup relay woke on the core the
model was computing on, the scheduler let it preempt the model, and each lookup cost the
request 0.3-0.5 ms; with the model on one core and everything else on the other, the hand-over
costs tens of microseconds. Settings take Linux cpu-list syntax ("0", "1-3", "0,2"); empty
means every core (no pinning). Where the OS has no affinity call, pinning is skipped with a
log line.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def parse(spec: str) -> frozenset[int]:
    """'0-2,5' -> {0, 1, 2, 5}; '' -> empty (no pinning). ValueError names what is wrong."""
    cpus: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"cpu list {spec!r}: {part!r} is not N or N-M") from None
        if first < 0 or last < first:
            raise ValueError(f"cpu list {spec!r}: {part!r} is not an ascending range of cores")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def available() -> frozenset[int]:
    """Cores this process may use now."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def pin(spec: str, what: str) -> frozenset[int]:
    """Restrict this process (its threads created from now on) to `spec`; returns the cores."""
    cpus = parse(spec)
    if not cpus:
        return available()
    if not hasattr(os, "sched_setaffinity"):
        log.warning("%s: this OS cannot pin to cores %s; running unpinned", what, spec)
        return available()
    # a child of a pinned process (the lookup relay) may move to cores its parent left
    usable = cpus & frozenset(range(os.cpu_count() or 1))
    try:
        if not usable:
            raise OSError
        os.sched_setaffinity(0, usable)
    except OSError:
        have = ",".join(map(str, range(os.cpu_count() or 1)))
        raise ValueError(f"{what}: cannot run on cores {spec} (this machine has {have})") from None
    log.info("%s pinned to cores %s", what, ",".join(map(str, sorted(usable))))
    return usable


def rest(cpus: frozenset[int]) -> str:
    """The cores this process may use that are not in `cpus`, as a cpu list ('' when none
    are left: then share). Ask before `pin` narrows what this process may use."""
    left = sorted(available() - cpus)
    return ",".join(map(str, left))


def one_machine_layout() -> tuple[str, str]:
    """(model cores, everything else) for a whole stack on this machine.

    The model's thread gets the first core to itself; the lookup relay, the cache service,
    the trainer and the clients share the others. Measured on the 2-core machine
    (docs/serving.md, "Threads and cores"): one torch thread on a core of its own is plain
    serving's fastest batch-1 setting, and it keeps the hand-over to the relay cheap. With a
    single core there is nothing to separate: ('', '').
    """
    cores = sorted(available())
    if len(cores) < 2:
        return "", ""
    return str(cores[0]), ",".join(map(str, cores[1:]))


BACKGROUND_NICE = 10  # what a background thread yields to the request path on shared cores


def to_background(spec: str, what: str) -> None:
    """Move the calling thread (Linux: affinity and priority are per thread) to `spec` and
    lower its priority. For work a request never waits on (shadow completions, records):
    pinned with the model's process, it would preempt the model on its own core."""
    tid = threading.get_native_id()
    if spec and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, parse(spec))
        except OSError as exc:
            log.warning("%s: cannot move to cores %s (%s); staying", what, spec, exc)
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
        except OSError as exc:
            log.warning("%s: cannot lower its priority (%s)", what, exc)
