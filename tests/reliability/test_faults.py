"""Faults under load: each dependency of the request path dies and comes back; no request fails.

The contract: the inference service never fails a request because the cache service,
Kafka or Redis is down; it serves the full model. Each test runs the clients, injects one
fault, checks what the design promises while it lasts and after recovery, and leaves the stack
healthy. Records the producer cannot deliver while the broker is down must all be counted:
afterwards, rows served = records sent + records dropped, exactly.
"""

from __future__ import annotations

import time

from tests.reliability.load import wait_until
from tests.reliability.rig import LAYERS, Rig, unaccounted

SETTLE_S = 30.0  # Kafka's delivery timeout (10 s) plus slack: every record sent or dropped
# Two closed-loop clients already keep both cores busy; four (the soak's) would only slow the
# restarted processes' start-up (a torch import), not change what is checked.
CLIENTS = 2


def _consumed(rig: Rig) -> float:
    return rig.metrics("trainer").get("gati_trainer_records_consumed_total")


def _dropped(records: dict[str, float], reason: str) -> float:
    return records.get(f"dropped:{reason}", 0.0)


def test_cache_service_killed_and_restarted(rig: Rig) -> None:
    unavailable = rig.metrics("inference").get("gati_cache_unavailable_total")
    with rig.load(CLIENTS) as load:
        load.wait_answers(50)
        rig.proc("cache").kill()
        answered = load.counts()[0]
        time.sleep(1.0)  # down for a while before it is started again
        back = rig.bring_back("cache")
        served_down = load.counts()[0] - answered
        full_model = rig.metrics("inference").get("gati_cache_unavailable_total") - unavailable
        hits = load.counts()[2]
        recovered = wait_until(lambda: load.counts()[2] > hits + 10, 30, "hits after restart")
    rig.figures.faults.append(
        f"cache service SIGKILLed: {served_down} requests answered while it was down "
        f"({full_model:.0f} by the full model for want of it), healthy {back:.1f} s after the "
        f"restart, hits back {recovered:.1f} s later"
    )
    print(f"\n{rig.figures.faults[-1]}")
    assert load.outcomes.failed == []
    assert served_down > 0 and full_model > 0


def test_broker_stopped_and_restarted(rig: Rig) -> None:
    with rig.load(CLIENTS) as load:
        load.wait_answers(50)
        before = rig.records()
        rig.proc("kafka").stop()
        # The producer cannot deliver: once its cap of unacknowledged records is reached (or
        # Kafka's delivery timeout passes) each record is dropped and counted as `kafka`.
        took = wait_until(
            lambda: _dropped(rig.records(), "kafka") > _dropped(before, "kafka") + 20,
            30,
            "records counted as dropped while the broker is down",
        )
        answered_down = load.counts()[0]
        back = rig.bring_back("kafka")
        answered_down = load.counts()[0] - answered_down
        sent = rig.records()["sent"]
        flowing = wait_until(
            lambda: rig.records()["sent"] > sent + 50, 30, "records sent after the broker restart"
        )
        consumed = _consumed(rig)  # the trainer finds the re-created topic and rejoins
        rejoined = wait_until(
            lambda: _consumed(rig) > consumed + 50, 40, "trainer consuming after the restart"
        )
    settled = wait_until(lambda: unaccounted(rig.records()) == 0, SETTLE_S, "records settled")
    after = rig.records()
    dropped = _dropped(after, "kafka") - _dropped(before, "kafka")
    rig.figures.faults.append(
        f"broker stopped (Tansu, loses everything): first drop counted after {took:.1f} s, "
        f"{dropped:.0f} records dropped; back {back:.1f} s after start, records flowing "
        f"{flowing:.1f} s later, trainer consuming {rejoined:.1f} s after that"
    )
    print(f"\n{rig.figures.faults[-1]}; offered {after['offered'] - before['offered']:.0f}, "
          f"sent {after['sent'] - before['sent']:.0f}, settled in {settled:.1f} s")  # fmt: skip
    assert load.outcomes.failed == []
    assert dropped > 0
    assert unaccounted(after) == 0  # offered == sent + dropped, every reason counted


def test_redis_stopped_and_restarted(rig: Rig) -> None:
    held = rig.publish(seed=11)
    assert held >= 2  # the session published v1 first; a restarted Redis starts again at v1
    rig.wait_version(held)
    errors = rig.metrics("cache").get("gati_cache_redis_errors_total")
    with rig.load(CLIENTS) as load:
        load.wait_answers(50)
        rig.proc("redis").stop()
        down = time.monotonic()
        time.sleep(2.0)
        during = load.versions_since(down)
        redis_errors = rig.metrics("cache").get("gati_cache_redis_errors_total") - errors
        back = rig.bring_back("redis")  # empty: the bundles and the version counter are gone
        time.sleep(1.5)  # the cache service reconnects, finds no pointer, keeps what it has
        empty = time.monotonic()
        load.wait_answers(20)
        after_restart = load.versions_since(empty)
        republished = rig.publish(seed=12)
        published = time.monotonic()
        followed = wait_until(
            lambda: republished in load.versions_since(published), 20, "republished bundle in use"
        )
        now = time.monotonic()
        load.wait_answers(20)
        settled = load.versions_since(now)
    rig.figures.faults.append(
        f"Redis stopped and restarted empty: v{held} kept throughout ({redis_errors:.0f} Redis "
        f"errors counted by the cache service); republished as v{republished}, in use "
        f"{followed:.2f} s after publishing"
    )
    print(f"\n{rig.figures.faults[-1]} (Redis back in {back:.1f} s)")
    assert load.outcomes.failed == []
    assert during == {held} and after_restart == {held}
    assert redis_errors > 0
    assert republished == 1 and settled == {republished}


def test_bundle_republished_at_the_version_held_is_followed(rig: Rig) -> None:
    def empty_redis() -> None:
        rig.proc("redis").stop()
        rig.bring_back("redis")  # empty: the next version handed out is 1 again

    early = next(iter(LAYERS))
    try:
        if rig.plan() != (1, list(LAYERS)):  # hold a v1 (the Redis test leaves one)
            empty_redis()
            assert rig.publish(seed=21) == 1
            wait_until(lambda: rig.plan() == (1, list(LAYERS)), 10, "v1 in use")
        empty_redis()
        assert rig.publish(seed=22, layers={early: LAYERS[early]}) == 1
        wait_until(lambda: rig.plan() == (1, [early]), 5, f"the new v1 (only {early}) in use")
    finally:
        rig.wait_version(rig.publish(seed=23))  # v2: whatever happened, the cache moves on
        rig.figures.faults.append("Redis restarted empty, a new bundle republished as v1")


def test_trainer_killed_and_restarted(rig: Rig) -> None:
    with rig.load(CLIENTS) as load:
        load.wait_answers(50)
        sent = rig.records()["sent"]
        rig.proc("trainer").kill()
        answered = load.counts()[0]
        back = rig.bring_back("trainer")
        served_down = load.counts()[0] - answered
        resumed = wait_until(lambda: _consumed(rig) > 50, 40, "the new trainer consuming")
        consumed = _consumed(rig)
        sent_since = rig.records()["sent"] - sent
    rig.figures.faults.append(
        f"trainer SIGKILLed: healthy {back:.1f} s after restart ({served_down} requests served "
        f"meanwhile), consuming {resumed:.1f} s later from the committed offsets "
        f"({consumed:.0f} records read, {sent_since:.0f} sent since the kill)"
    )
    print(f"\n{rig.figures.faults[-1]}")
    assert load.outcomes.failed == []
    assert served_down > 0
