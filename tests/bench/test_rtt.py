"""The round-trip benchmark runs end to end (figures printed; ratios are judged in docs/cache.md,
not asserted: two shared cores make single runs noisy)."""

from __future__ import annotations

import pytest

from bench.rtt import LAYERS, run_benchmark, table


@pytest.mark.slow
def test_round_trip_benchmark(tmp_path) -> None:
    results = run_benchmark(requests=300, rounds=1, work=tmp_path)
    print("\n" + table(results))
    assert {(r.server, r.layer) for r in results} == {
        (s, layer) for s in ("echo", "cache", "cache+mtls") for layer in LAYERS
    }
    assert all(r.p50_ms > 0 for r in results)  # figures, not limits: the machine is shared
    assert "over mutual TLS / plaintext" in table(results)
