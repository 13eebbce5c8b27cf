"""The metric names and labels the docs give are the ones the services define.

Every `gati_*` metric a service registers (services/*/metrics.py, services/common) is listed
with its labels in that service's document (inference: docs/serving.md, cache: docs/cache.md,
trainer: docs/learning.md), and wherever a document writes labels beside a name (`name{a,b}`,
a PromQL selector `name{a="x"}`, or a table's labels column) they are the metric's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gati import names
from tests.deploy import k8s_checks as k8s

DOCS = [k8s.REPO / "README.md", *sorted((k8s.REPO / "docs").glob("*.md"))]
SERVICE_DOCS = {"inference": "serving.md", "cache": "cache.md", "trainer": "learning.md"}
NOT_METRICS = {names.OUTPUT_HIT, names.OUTPUT_EXIT_LAYER}  # output tensors, not metrics
MENTION = re.compile(r"\bgati_[a-z0-9_]+(?:\{[^}\n]*\})?")


def defined() -> dict[str, dict[str, tuple[str, ...]]]:
    """Service -> metric name as exposed (counters with `_total`) -> its label names."""
    from services.cache.metrics import CacheMetrics
    from services.inference.metrics import InferenceMetrics
    from services.trainer.metrics import TrainerMetrics

    found: dict[str, dict[str, tuple[str, ...]]] = {}
    for service, cls in (
        ("inference", InferenceMetrics),
        ("cache", CacheMetrics),
        ("trainer", TrainerMetrics),
    ):
        metrics = found.setdefault(service, {})
        for collector in cls().registry._collector_to_names:  # every family it registered
            name = getattr(collector, "_name", None)
            if name is None:
                continue
            kind = getattr(collector, "_type", "")
            metrics[f"{name}_total" if kind == "counter" else name] = tuple(
                getattr(collector, "_labelnames", ())
            )
    return found


DEFINED = defined()
ALL = {name: labels for metrics in DEFINED.values() for name, labels in metrics.items()}
SAMPLE_SUFFIXES = ("_bucket", "_sum", "_count")


def family(sample: str) -> str | None:
    """The metric a sample name belongs to (histogram series included), or None."""
    if sample in ALL:
        return sample
    for suffix in SAMPLE_SUFFIXES:
        if sample.endswith(suffix) and sample.removesuffix(suffix) in ALL:
            return sample.removesuffix(suffix)
    return None


def mentions(text: str) -> list[tuple[str, set[str] | None, bool]]:
    """(name, labels written beside it or None, whether they are a PromQL selector)."""
    found = []
    for match in MENTION.finditer(text):
        token = match.group(0)
        name, _, rest = token.partition("{")
        if name in NOT_METRICS:
            continue
        if not rest:
            found.append((name, None, False))
            continue
        body = rest.removesuffix("}")
        selector = any(op in body for op in ("=", "~"))
        if selector:
            labels = {re.split(r"[=!~]", part)[0].strip() for part in body.split(",") if part}
        else:
            labels = {part.strip() for part in body.split(",") if part.strip()}
        found.append((name, labels, selector))
    return found


def table_body(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(lower-cased header cells, cells) of every body row of every Markdown table."""
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
        elif not set(cells[0]) <= {"-", " ", ":"}:  # not the separator row
            yield header, cells


def table_rows(text: str) -> list[tuple[str, set[str]]]:
    """(metric, labels) of every row of a Markdown table whose header has a labels column."""
    rows = []
    for header, cells in table_body(text):
        if "labels" in header:
            column = cells[header.index("labels")]
            labels = {x.strip(" `") for x in column.split(",") if x.strip(" `")}
            rows += [(name, labels) for name in re.findall(r"`(gati_[a-z0-9_]+)`", cells[0])]
    return rows


def bare_in_tables(text: str) -> list[str]:
    """Metric names written without labels in the first column of a table that has no
    labels column (there the labels must be written beside the name)."""
    found = []
    for header, cells in table_body(text):
        if "labels" not in header:
            found += re.findall(r"`(gati_[a-z0-9_]+)`", cells[0])
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_metric_named_exists_with_the_labels_written(doc: Path) -> None:
    text = doc.read_text()
    problems = []
    for name, labels, selector in mentions(text):
        metric = family(name)
        if metric is None:
            problems.append(f"{name}: no service defines it")
            continue
        if labels is None:
            continue
        own = set(ALL[metric])
        if selector and not labels <= own | {"le", "namespace", "pod", "job", "instance"}:
            problems.append(f"{name}{{{','.join(sorted(labels))}}}: labels are {sorted(own)}")
        if not selector and labels != own:
            problems.append(f"{name}{{{','.join(sorted(labels))}}}: labels are {sorted(own)}")
    for name, labels in table_rows(text):
        metric = family(name)
        if metric is None:
            problems.append(f"{name} (table): no service defines it")
        elif labels != set(ALL[metric]):
            problems.append(f"{name} (table): {sorted(labels)}, labels are {sorted(ALL[metric])}")
    for name in bare_in_tables(text):
        metric = family(name)
        if metric is not None and ALL[metric]:
            problems.append(f"{name} (table): write its labels {{{','.join(ALL[metric])}}}")
    assert problems == [], f"{doc.name}: " + "; ".join(problems)


@pytest.mark.parametrize("service", sorted(SERVICE_DOCS))
def test_each_service_doc_lists_its_metrics_with_labels(service: str) -> None:
    text = (k8s.REPO / "docs" / SERVICE_DOCS[service]).read_text()
    written: dict[str, set[str]] = {}  # name -> labels written with it somewhere
    for name, labels, selector in mentions(text):
        if labels is not None and not selector:
            written.setdefault(name, set()).update(labels)
        else:
            written.setdefault(name, set())
    for name, labels in table_rows(text):
        written.setdefault(name, set()).update(labels)
    missing = [
        f"{name}{{{','.join(labels)}}}" if labels else name
        for name, labels in sorted(DEFINED[service].items())
        if name not in written or (labels and written[name] != set(labels))
    ]
    assert missing == [], f"docs/{SERVICE_DOCS[service]} lacks (with labels): {missing}"


def test_the_parser_sees_labels_and_selectors() -> None:
    text = '`gati_records_dropped_total{reason}` and gati_live_agreement_total{agree="true"}'
    assert mentions(text) == [
        ("gati_records_dropped_total", {"reason"}, False),
        ("gati_live_agreement_total", {"agree"}, True),
    ]
    table = "| metric | labels | meaning |\n| --- | --- | --- |\n| `gati_x_total` | a, b | m |\n"
    assert table_rows(table) == [("gati_x_total", {"a", "b"})]
