"""Sustained load: N clients for a bounded time, zero errors, memory that does not run away.

Resident memory of every process is sampled after a warm-up (first allocations, thread pools,
the trainer's window filling are not growth) and again at the end. Growth is reported for all
of them; the test fails only on runaway growth (over 50%) of a gati service. Redis and the
in-memory broker are reported but not judged: the broker keeps every record by design.
GATI_SOAK_SECONDS and GATI_SOAK_CLIENTS make a longer run (defaults 20 s, 4 clients).
"""

from __future__ import annotations

import os
import time

from tests.reliability.rig import SERVICES, Rig

SOAK_S = float(os.environ.get("GATI_SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("GATI_SOAK_CLIENTS", "4"))
WARMUP_S = 3.0
RUNAWAY = 0.5  # relative RSS growth that fails the test


def test_concurrent_clients_for_a_bounded_time(rig: Rig) -> None:
    records_before = rig.records()
    consumed_before = rig.metrics("trainer").get("gati_trainer_records_consumed_total")
    with rig.load(CLIENTS) as load:
        time.sleep(WARMUP_S)
        answered_warm = load.counts()[0]
        before = rig.rss()
        time.sleep(SOAK_S)
        after = rig.rss()
    outcomes = load.outcomes
    records_after = rig.records()
    consumed = rig.metrics("trainer").get("gati_trainer_records_consumed_total") - consumed_before
    growth = {name: (after[name] - before[name]) / before[name] for name in before}
    rig.figures.memory = {name: (before[name], after[name]) for name in before}
    rig.figures.soak = f"{CLIENTS} clients, {SOAK_S:.0f} s"
    rate = (outcomes.ok - answered_warm) / SOAK_S
    print(
        f"\nsoak: {CLIENTS} clients, {SOAK_S:.0f} s: {outcomes.ok} answered ({rate:.0f}/s), "
        f"{len(outcomes.failed)} failed, {outcomes.hits} hits; records sent "
        f"{records_after['sent'] - records_before['sent']:.0f}, trainer consumed {consumed:.0f}; "
        + ", ".join(f"{n} {g:+.1%}" for n, g in growth.items())
    )
    assert outcomes.failed == []
    assert outcomes.ok > CLIENTS * SOAK_S  # > 1 answer per client-second: the stack kept up
    assert outcomes.hits > 0  # the cache service answered lookups throughout
    assert records_after["sent"] > records_before["sent"]  # records flowed to the broker ...
    assert consumed > 0  # ... and on to the trainer
    runaway = {n: f"{growth[n]:+.0%}" for n in SERVICES if growth[n] > RUNAWAY}
    assert not runaway, f"runaway memory growth over {SOAK_S:.0f} s: {runaway}"
