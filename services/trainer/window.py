"""The recent past the trainer learns from: labelled records of one model, newest last.

Only labelled records (the base model's answer is known: every miss, and hits completed in
the background) can teach a probe or calibrate a selector. Unlabelled hits are counted, for
the live hit rate and the share of hits that carry a label (the realised shadow fraction,
which weights labelled hits back up: see `Learner`), and otherwise ignored: labelling them
with the served answer would teach the probes their own mistakes.

The window holds at most `max_records` labelled records and none older than `max_seconds`
before the newest one (record time, not the trainer's clock: a replay after a restart must
not empty the window, and an idle stream keeps what it last saw). Kafka delivers at least
once, so records are de-duplicated by (request id, row) over a memory a few windows long.

Records far in the past: a record older than the newest one by more than `max_seconds` is
refused (STALE), however old it is by the trainer's clock. Age by the trainer's clock would
throw away a replay after an outage, which is still real traffic; but a record already beyond
the window's age bound would sit at the window's young end (records are kept in arrival
order) until every record before it aged out, e.g. one with an unset time (0.0).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from gati.records import Record

ADDED, UNLABELLED, DUPLICATE, STALE = "labelled", "unlabelled", "duplicate", "stale"


@dataclass(frozen=True)
class WindowStats:
    size: int  # labelled records held
    new: int  # labelled records added since the last `mark_trained`
    hit_rate: float  # share of hits among the last `recent` records seen (labelled or not)
    hit_label_rate: float  # share of those hits that carry a label (shadow completions)
    newest: float  # time of the newest record (0 when empty)


class Window:
    def __init__(self, max_records: int, max_seconds: float, recent: int = 1000) -> None:
        if max_records < 1 or max_seconds <= 0:
            raise ValueError("window: max_records >= 1 and max_seconds > 0 are required")
        self.max_records = max_records
        self.max_seconds = max_seconds
        self._records: deque[Record] = deque()
        self._seen: OrderedDict[tuple[str, int, bool], None] = OrderedDict()
        self._seen_cap = 4 * max_records + 10 * recent
        self._hits: deque[bool] = deque(maxlen=recent)
        self._hit_labelled: deque[bool] = deque(maxlen=recent)  # per hit: does it carry a label
        self._new = 0
        self._newest = 0.0

    def add(self, rec: Record) -> str:
        """Absorb one record: ADDED, UNLABELLED (counted only), DUPLICATE or STALE (ignored)."""
        if rec.time < self._newest - self.max_seconds:
            return STALE
        key = (rec.request_id, rec.row, rec.labelled)
        if key in self._seen:
            return DUPLICATE
        self._seen[key] = None
        if len(self._seen) > self._seen_cap:
            self._seen.popitem(last=False)
        # A shadow-completed hit is the same request as its unlabelled twin would be: count
        # every served row once for the hit rate, whether or not it carries a label.
        self._hits.append(rec.hit)
        if rec.hit:
            self._hit_labelled.append(rec.labelled)
        self._newest = max(self._newest, rec.time)
        if not rec.labelled or rec.base_scores is None:  # distillation needs the logits
            return UNLABELLED
        self._records.append(rec)
        self._new += 1
        while len(self._records) > self.max_records:
            self._records.popleft()
        self.prune()
        return ADDED

    def prune(self) -> None:
        horizon = self._newest - self.max_seconds
        while self._records and self._records[0].time < horizon:
            self._records.popleft()

    def records(self) -> list[Record]:
        """Labelled records, oldest first (a snapshot: the window may move on)."""
        return list(self._records)

    def mark_trained(self) -> None:
        self._new = 0

    def stats(self) -> WindowStats:
        hits, labelled = self._hits, self._hit_labelled
        return WindowStats(
            len(self._records),
            self._new,
            sum(hits) / len(hits) if hits else 0.0,
            sum(labelled) / len(labelled) if labelled else 1.0,
            self._newest,
        )

    def __len__(self) -> int:
        return len(self._records)
