"""Core placement (services/common/cpus.py): cpu lists, pinning, the one-machine layout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from services.common import cpus


def test_cpu_lists_parse_and_bad_ones_say_why() -> None:
    assert cpus.parse("0-2,5") == {0, 1, 2, 5}
    assert cpus.parse("") == frozenset()
    with pytest.raises(ValueError, match="'x' is not N or N-M"):
        cpus.parse("0,x")
    with pytest.raises(ValueError, match="ascending"):
        cpus.parse("3-1")


def test_layout_gives_the_model_a_core_of_its_own() -> None:
    model, rest = cpus.one_machine_layout()
    cores = sorted(cpus.available())
    if len(cores) < 2:
        assert (model, rest) == ("", "")
    else:
        assert cpus.parse(model) == {cores[0]}
        assert cpus.parse(rest) == set(cores[1:])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity on this OS")
def test_a_pinned_process_child_may_move_to_the_cores_its_parent_left() -> None:
    """The lookup relay is started by the pinned inference process and must reach the
    other cores: pinning checks the machine's cores, not the inherited set."""
    cores = sorted(cpus.available())
    if len(cores) < 2:
        pytest.skip("needs two cores")  # placement is a no-op on one core
    code = (
        "import os; from services.common import cpus; "
        f"cpus.pin('{cores[0]}', 'parent'); "
        f"print(sorted(cpus.pin('{cores[1]}', 'child')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[{cores[1]}]"
    with pytest.raises(ValueError, match="cannot run on cores 4096"):
        cpus.pin("4096", "test")


def test_background_threads_yield_to_the_request_path() -> None:
    seen: list[int] = []

    def work() -> None:
        cpus.to_background("", "test thread")
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [os.getpriority(os.PRIO_PROCESS, 0) + cpus.BACKGROUND_NICE]
