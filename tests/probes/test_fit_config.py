"""One config type for a fit: `gati probes fit` and `gati serve trainer` read the same fields,
so a setting has one name, one default and one check on both sides."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cli import probes_eval, probes_fit, probes_publish, probes_rollback
from gati import config
from gati.config import ConfigError
from gati.probes.fitting import fit_config
from gati.probes.fitting.fit_config import CostConfig, FitConfig, TrainConfig
from services.trainer.config import TrainerConfig

REQUIRED = ["--arch", "a", "--weights", "w", "--data", "d", "--bundle", "b"]


def fit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    probes_fit.add_arguments(parser)
    return parser


def test_the_names_match_what_the_library_builds() -> None:
    from gati.probes.fitting.costs import DEFAULT_RTT_MS, MODES
    from gati.probes.serving.reductions import REDUCTIONS
    from gati.probes.serving.selectors import FIT_SELECTORS
    from gati.probes.serving.variants import VARIANTS

    assert tuple(VARIANTS) == fit_config.VARIANT_NAMES
    assert tuple(REDUCTIONS) == fit_config.REDUCTION_NAMES
    assert MODES == fit_config.LOOKUP_MODES
    assert CostConfig().rtt_ms == DEFAULT_RTT_MS
    assert FitConfig().selector in FIT_SELECTORS


def test_fit_flags_and_trainer_share_every_default() -> None:
    """An unflagged `gati probes fit` and an unconfigured trainer fit with the same settings,
    and plan with the serving cost model (lookups on the cache service)."""
    args = fit_parser().parse_args(REQUIRED)
    assert probes_fit.config_from_args(args) == FitConfig()
    assert TrainerConfig().fit_config() == FitConfig()
    assert TrainerConfig().cost_config() == CostConfig() == CostConfig(lookup_mode="remote")
    assert args.lookup_mode == "remote" and args.model is None and args.bundle_version == 1
    default = FitConfig()
    assert (default.selector, default.calibration, default.margin) == (
        "logistic",
        "empirical",
        0.005,
    )
    assert default.variants == ("linear", "mlp", "conv", "knn") and default.threads == 1


def test_every_fit_and_cost_setting_is_a_trainer_setting_with_its_help() -> None:
    trainer = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    for cls in (FitConfig, CostConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f"{f.name} has no help"
            assert trainer[f.name].default == f.default, f.name
    names = config.env_names(TrainerConfig)
    assert {"GATI_VARIANTS", "GATI_AGREEMENT_TARGET", "GATI_LOOKUP_MODE", "GATI_THREADS"} <= names


def test_trainer_environment_sets_the_fit() -> None:
    env = {
        "GATI_VARIANTS": "linear,mlp",
        "GATI_NOVELTY": "false",
        "GATI_LAYERS": "",
        "GATI_MEMORY_BUDGET_MB": "2",
        "GATI_LOOKUP_MODE": "local",
    }
    c = config.load(TrainerConfig, None, env)
    fit = c.fit_config()
    assert fit.variants == ("linear", "mlp") and fit.novelty is False and fit.layers is None
    assert fit.memory_budget_bytes == 2 << 20 and c.cost_config().lookup_mode == "local"


def test_fit_flags_parse_to_the_config() -> None:
    flags = "--variants linear,conv --layers l1,l2 --no-novelty --no-class-features --no-live"
    flags += " --agreement-target 0.97 --threads 3 --seed 7 --memory-budget-mb 0.5 --epochs 4"
    args = fit_parser().parse_args([*REQUIRED, *flags.split()])
    cfg = probes_fit.config_from_args(args)
    assert cfg.variants == ("linear", "conv") and cfg.layers == ("l1", "l2")
    assert not (cfg.novelty or cfg.class_features or cfg.live)
    assert cfg.agreement_target == 0.97 and cfg.threads == 3 and cfg.epochs == 4
    assert cfg.seed == 0  # --seed is the request stream's, not the fit's
    assert cfg.memory_budget_bytes == 1 << 19


@pytest.mark.parametrize(
    "old",
    [
        ["--out", "b"],
        ["--target", "0.9"],
        ["--lookup", "local"],
        ["--model-id", "m"],
        ["--version", "2"],
        ["--cache", "dir"],
    ],
)
def test_old_fit_flag_names_are_gone(old: list[str]) -> None:
    with pytest.raises(SystemExit):
        fit_parser().parse_args([*REQUIRED, *old])


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"selector": "oracle"}, "selector"),
        ({"calibration": "vibes"}, "calibration"),
        ({"variants": ("transformer",)}, "variants"),
        ({"agreement_target": 1.0}, "agreement_target"),
        ({"memory_reduction": "pool3"}, "memory_reduction"),
        ({"epochs": 0}, "epochs"),
        ({"threads": 0}, "threads"),
    ],
)
def test_a_bad_setting_is_refused_by_name_on_both_sides(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        FitConfig(**kw)
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        TrainerConfig(**kw)
    with pytest.raises(ConfigError, match=r"^lookup_mode: "):
        CostConfig(lookup_mode="carrier-pigeon")


def test_train_config_is_what_a_fit_trains_with() -> None:
    cfg = FitConfig(epochs=3, filters=8)
    assert isinstance(cfg, TrainConfig) and (cfg.epochs, cfg.filters) == (3, 8)


@pytest.mark.parametrize("module", [probes_fit, probes_eval, probes_publish, probes_rollback])
def test_every_option_has_help_and_says_what_unset_means(module) -> None:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{module.__name__}: {action.option_strings} has no help"
        assert action.option_strings, f"{module.__name__}: positional {action.dest}"
        if action.default is None and not action.required:
            assert "default" in action.help, f"{action.option_strings}: unset means what?"
