"""The README's first page says what is true: asset checksums, client names, the harness call.

The checksum test reads the assets folder the tests use (GATI_ASSETS, as `make test` sets it)
and is skipped where there is none; the rest reads the repository only.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import re
from pathlib import Path

import pytest

from bench.stack import Stack, local_stack
from gati import names
from tests.deploy import k8s_checks as k8s

README = (k8s.REPO / "README.md").read_text()
ASSETS = Path(os.environ.get("GATI_ASSETS", k8s.REPO.parent / "shared" / "assets"))
CHECKSUMS = dict(
    re.findall(r"^\| ((?:cifar10|models)/[\w.-]+) \| `([0-9a-f]{64})` \|$", README, re.M)
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_the_checksum_table_covers_the_listed_files() -> None:
    listed = set(re.findall(r"^ASSETS/((?:cifar10|models)/[\w.-]+)", README, re.M))
    assert listed and listed == set(CHECKSUMS)
    for file, digest in CHECKSUMS.items():
        if file.startswith("models/"):  # resnetNN-XXXXXXXX.th: the start of its sha256
            assert file.removesuffix(".th").rsplit("-", 1)[1] == digest[:8], file


@pytest.mark.skipif(not ASSETS.is_dir(), reason="no assets folder (set GATI_ASSETS)")
def test_the_checksums_are_the_assets() -> None:
    for file, digest in CHECKSUMS.items():
        assert _sha256(ASSETS / file) == digest, file


def test_the_client_examples_use_the_service_names() -> None:
    for name in (names.PARAM_CACHES, names.PARAM_HIT, names.PARAM_BUNDLE_VERSION):
        assert f'"{name}"' in README
    for tensor in (names.INPUT_IMAGE, names.OUTPUT_LABEL, names.OUTPUT_HIT):
        assert f'"{tensor}"' in README
    assert f'InferenceServerClient("localhost:{names.INFERENCE_PORT}")' in README
    assert f'InferenceServerClient("localhost:{names.INFERENCE_HTTP_PORT}")' in README


def test_the_harness_call_binds() -> None:
    (call,) = re.findall(r"with (local_stack\(.*?\)) as stack:", README, re.S)
    node = ast.parse(call, mode="eval").body
    assert isinstance(node, ast.Call)
    args = [ast.unparse(a) for a in node.args]
    kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
    inspect.signature(local_stack).bind(*args, **kwargs)
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "local_stack" in b]
    for field in re.findall(r"\bstack\.(\w+)", block):
        assert field in Stack.__dataclass_fields__ or hasattr(Stack, field), field


def test_the_makefile_reads_assets_as_the_readme_says() -> None:
    makefile = (k8s.REPO / "Makefile").read_text()
    assert "ASSETS ?= $(or $(GATI_ASSETS),$(abspath ../shared/assets))" in makefile
    assert "export GATI_ASSETS := $(ASSETS)" in makefile
    assert "gati demo --assets $(ASSETS)" in makefile
