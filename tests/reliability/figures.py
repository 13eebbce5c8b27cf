"""The figures the reliability suite reports at the end of a run (CI shows them).

Tests add to one `Figures` per session (kept in pytest's config stash by conftest.py); the
terminal summary prints `lines()`, whether the tests passed or not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.reliability.load import Outcomes

MiB = 1 << 20
BACKGROUND_PATHS = ("announcements", "pointers", "bundle keys", "records")


@dataclass
class Figures:
    requests: int = 0  # sent by the load clients
    answered: int = 0
    errors: list[str] = field(default_factory=list)  # failed client requests, "CODE: details"
    faults: list[str] = field(default_factory=list)  # what was injected, with recovery times
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (before, after)
    soak: str = ""  # clients and duration of the memory run
    records: dict[str, float] = field(default_factory=dict)  # offered, sent, dropped:<reason>
    bad_inputs: Counter[str] = field(default_factory=Counter)  # status code -> count
    bundles_refused: Counter[str] = field(default_factory=Counter)  # reason -> count
    # fuzzed inputs of the background paths (test_fuzz_background.py)
    background: Counter[str] = field(default_factory=Counter)  # path -> inputs tried
    background_refused: Counter[str] = field(default_factory=Counter)  # "side reason" -> count
    threads_alive: dict[str, bool] = field(default_factory=dict)  # "service thread" -> alive
    streams_cap: str = ""  # Lookup streams beyond the cache service's cap (test_streams_cap.py)
    notes: list[str] = field(default_factory=list)

    def add_load(self, outcomes: Outcomes) -> None:
        self.requests += outcomes.sent
        self.answered += outcomes.ok
        self.errors += outcomes.failed

    def lines(self) -> list[str]:
        out = [
            f"requests sent {self.requests}, answered {self.answered}, "
            f"errors {len(self.errors)}" + (f" (first: {self.errors[0]})" if self.errors else ""),
            f"faults injected {len(self.faults)}" + "".join(f"\n  - {f}" for f in self.faults),
        ]
        if self.records:
            r = self.records
            dropped = {k.split(":", 1)[1]: v for k, v in r.items() if k.startswith("dropped:")}
            shown = ", ".join(f"{k} {v:.0f}" for k, v in dropped.items() if v) or "none"
            out.append(
                f"records offered {r['offered']:.0f}, sent {r['sent']:.0f}, "
                f"dropped {sum(dropped.values()):.0f} ({shown}), "
                f"unaccounted {r['offered'] - r['sent'] - sum(dropped.values()):.0f}"
            )
        if self.memory:
            out.append(f"memory over the soak ({self.soak}), RSS before -> after:")
            for name, (before, after) in self.memory.items():
                out.append(
                    f"  - {name}: {before / MiB:.0f} -> {after / MiB:.0f} MiB "
                    f"({(after - before) / before:+.1%})"
                )
        if self.bad_inputs:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(self.bad_inputs.items()))
            out.append(f"bad inputs sent {sum(self.bad_inputs.values())}: {shown}")
        if self.bundles_refused:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(self.bundles_refused.items()))
            out.append(f"hostile bundles refused {sum(self.bundles_refused.values())}: {shown}")
        if self.background:
            b = self.background
            paths = ", ".join(f"{k} {b[k]}" for k in BACKGROUND_PATHS if k in b)
            refused = self.background_refused
            shown = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"
            dead = sorted(k for k, ok in self.threads_alive.items() if not ok)
            checked = ", ".join(sorted(self.threads_alive))
            alive = f"no ({', '.join(dead)})" if dead else f"yes ({checked})" if checked else "?"
            out.append(
                f"background-path inputs tried {sum(b.values())} ({paths}), refused by reason "
                f"{sum(refused.values())}: {shown}; threads alive after: {alive}"
            )
        if self.streams_cap:
            out.append(self.streams_cap)
        out += [f"note: {n}" for n in self.notes]
        return out
