"""Every `gati` command resolves to a module with the leaf interface, and its --help works."""

from __future__ import annotations

import importlib

import pytest

from gati.cli import COMMANDS, main


@pytest.mark.parametrize(
    "command", sorted(COMMANDS, key=str), ids=lambda c: " ".join(filter(None, c))
)
def test_command_module_has_the_leaf_interface(command) -> None:
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.add_arguments) and callable(module.run)


def test_bench_rtt_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "rtt", "--help"])
    assert done.value.code == 0
    assert "--requests" in capsys.readouterr().out
