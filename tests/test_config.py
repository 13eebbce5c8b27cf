"""Typed configuration: flags > environment > file > default, and errors naming the field."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gati import config as cfg
from services.cache.config import CacheConfig
from services.inference.config import InferenceConfig, ModelSpec
from services.trainer.config import TrainerConfig


def _args(cls: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, cls)
    return parser.parse_args(argv)


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("port: 9000\nmetrics_port: 9001\nworkers: 3\nmodel: a\narch: resnet20\n")
    env = {"GATI_METRICS_PORT": "9101", "GATI_CACHES": "false"}
    args = _args(InferenceConfig, ["--config", str(file), "--port", "9200"])
    c = cfg.load(InferenceConfig, args, env)
    assert c.port == 9200  # flag
    assert c.metrics_port == 9101  # environment
    assert c.workers == 3  # file
    assert c.caches is False
    assert c.max_batch == 256  # default


def test_bool_settings_are_flag_pairs() -> None:
    required = ["--model", "a", "--arch", "r"]
    env = {"GATI_CACHES": "false"}
    assert cfg.load(InferenceConfig, _args(InferenceConfig, required), env).caches is False
    on = _args(InferenceConfig, [*required, "--caches"])
    assert cfg.load(InferenceConfig, on, env).caches is True  # the flag beats the environment
    off = _args(InferenceConfig, [*required, "--no-caches"])
    assert cfg.load(InferenceConfig, off, {}).caches is False
    assert (
        cfg.load(
            TrainerConfig, _args(TrainerConfig, ["--no-group-neighbours"]), {}
        ).group_neighbours
        is False
    )
    with pytest.raises(SystemExit):  # a plain flag takes no value
        _args(InferenceConfig, [*required, "--caches", "false"])


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(cfg.ConfigError, match="port"):
        cfg.load(
            InferenceConfig,
            _args(InferenceConfig, ["--port", "abc", "--model", "a", "--arch", "r"]),
            {},
        )
    with pytest.raises(cfg.ConfigError, match=r"shadow_fraction: must be within 0\.\.1"):
        cfg.load(
            InferenceConfig,
            None,
            {"GATI_MODEL": "a", "GATI_ARCH": "r", "GATI_SHADOW_FRACTION": "2"},
        )
    with pytest.raises(cfg.ConfigError, match="model"):
        cfg.load(InferenceConfig, None, {})
    with pytest.raises(cfg.ConfigError, match="caches: expected true or false"):
        cfg.load(
            InferenceConfig, None, {"GATI_MODEL": "a", "GATI_ARCH": "r", "GATI_CACHES": "maybe"}
        )


def test_unknown_file_setting_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text('{"prot": 1}')
    with pytest.raises(cfg.ConfigError, match="unknown settings \\['prot'\\]"):
        cfg.load(CacheConfig, _args(CacheConfig, ["--config", str(file)]), {})


def test_several_models_from_one_setting() -> None:
    c = cfg.load(
        InferenceConfig,
        None,
        {
            "GATI_MODELS": "a=resnet20@/w/a.th,b=pkg.mod:build",
            "GATI_MODEL": "c",
            "GATI_ARCH": "resnet56",
            "GATI_WEIGHTS": "/w/c.th",
        },
    )
    assert c.model_specs() == [
        ModelSpec("c", "resnet56", "/w/c.th"),
        ModelSpec("a", "resnet20", "/w/a.th"),
        ModelSpec("b", "pkg.mod:build", None),
    ]
    assert "GATI_MODELS" in cfg.env_names(InferenceConfig)


def test_a_setting_with_choices_refuses_others_from_a_flag_or_the_environment() -> None:
    refused = r"^selector: 'oracle' invalid; valid: "
    with pytest.raises(cfg.ConfigError, match=refused):
        cfg.load(TrainerConfig, _args(TrainerConfig, ["--selector", "oracle"]), {})
    with pytest.raises(cfg.ConfigError, match=refused):
        cfg.load(TrainerConfig, None, {"GATI_SELECTOR": "oracle"})
    c = cfg.load(TrainerConfig, _args(TrainerConfig, ["--selector", "auto"]), {})
    assert c.selector == "auto"


def test_a_secret_has_no_flag_and_is_never_shown(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, CacheConfig)
    with pytest.raises(SystemExit):  # a password on a command line is readable by `ps`
        parser.parse_args(["--redis-password", "pw"])
    assert "GATI_REDIS_PASSWORD" in (parser.epilog or "")
    file = tmp_path / "c.yaml"
    file.write_text("redis_password: from-file\n")
    from_file = cfg.load(CacheConfig, parser.parse_args(["--config", str(file)]), {})
    assert from_file.redis_password == "from-file"
    from_env = cfg.load(CacheConfig, parser.parse_args([]), {"GATI_REDIS_PASSWORD": "from-env"})
    assert from_env.redis_password == "from-env"
    assert "from-env" not in repr(from_env) and "from-env" not in str(from_env)


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    from launch.certificates import generate

    made = generate(tmp_path / "certs", names=("server",))
    cert, key, ca = str(made["server"].cert), str(made["server"].key), str(made.ca)
    CacheConfig(tls_cert=cert, tls_key=key, tls_ca=ca, tls_client_auth=True)  # fine
    cases = {
        "tls_cert: set tls_key too": {"tls_cert": cert},
        "tls_client_auth: needs tls_ca": {
            "tls_cert": cert,
            "tls_key": key,
            "tls_client_auth": True,
        },
        "tls_client_auth: needs tls_cert": {"tls_ca": ca, "tls_client_auth": True},
        "tls_ca: cannot read": {"tls_ca": str(tmp_path / "missing.pem")},
        "tls_cert: ": {"tls_cert": str(tmp_path / "c.yaml"), "tls_key": key},
    }
    (tmp_path / "c.yaml").write_text("not a certificate\n")
    for message, fields in cases.items():
        with pytest.raises(cfg.ConfigError, match=message):
            CacheConfig(**fields)


def test_signing_settings_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="signing_key_id: set signing_keys too"):
        CacheConfig(signing_key_id="k1")
    with pytest.raises(cfg.ConfigError, match=r"signing_keys: .* is not a directory"):
        CacheConfig(signing_keys=str(tmp_path / "none"))
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k1").write_text("a" * 32)
    (keys / "k2").write_text("b" * 32)
    with pytest.raises(cfg.ConfigError, match=r"signing_key_id: .* holds 2 keys"):
        CacheConfig(signing_keys=str(keys))
    ring = CacheConfig(signing_keys=str(keys), signing_key_id="k2").keyring()
    assert ring is not None and ring.signing_id == "k2" and "bbbb" not in repr(ring)


def test_redis_and_kafka_tls_files_that_would_go_unused_are_refused(tmp_path: Path) -> None:
    from launch.certificates import generate

    ca = str(generate(tmp_path / "certs", names=()).ca)
    cases = {
        r"redis_tls_ca: given, but the Redis URL redis://:\*\*\*@h:1/0 is not rediss://": {
            "redis_url": "redis://:pw@h:1/0",
            "redis_tls_ca": ca,
        },
        "redis_tls_ca: .* is not a readable file": {
            "redis_url": "rediss://h:1/0",
            "redis_tls_ca": str(tmp_path / "missing.pem"),
        },
        "redis_tls_cert: redis_tls_cert and redis_tls_key go together": {
            "redis_url": "rediss://h:1/0",
            "redis_tls_cert": ca,
        },
        "kafka_ssl_ca: applies to SSL and SASL_SSL only, not PLAINTEXT": {"kafka_ssl_ca": ca},
    }
    for message, fields in cases.items():
        with pytest.raises(cfg.ConfigError, match=message):
            TrainerConfig(**fields)
    ok = TrainerConfig(redis_url="rediss://h:1/0", redis_tls_ca=ca, kafka_security_protocol="SSL")
    assert ok.redis_options()["ssl_ca_certs"] == ca


def test_inference_serving_tls_must_verify_its_cache(tmp_path: Path) -> None:
    from launch.certificates import generate

    made = generate(tmp_path / "certs", names=("server",))
    tls = {"tls_cert": str(made["server"].cert), "tls_key": str(made["server"].key)}
    served = {"model": "m", "arch": "resnet20", "cache_address": "cache:8011", **tls}
    with pytest.raises(cfg.ConfigError, match="tls_ca: serving TLS with a cache_address"):
        InferenceConfig(**served)
    client = InferenceConfig(**served, tls_ca=str(made.ca)).client_tls()
    assert client is not None and client.cert == tls["tls_cert"]  # shown to the cache too
