"""`gati probes publish` / `rollback` with no --redis-url find the Redis of a `gati up` stack
(and its generated password) in the run directory (issue: no silent misconfiguration): that
Redis listens on a port `gati up` picked, so the default URL would reach another Redis or none.

The stack is a state.json written by `cli.local.state` exactly as `gati up` writes it, around
a real password-protected redis-server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cli.local import state as st
from cli.main import main as gati_main
from gati import names
from gati.signing import Keyring, split_seal
from gati.store import BundleStore
from launch.certificates import generate_signing_keys
from launch.ports import free_port
from launch.processes import start_redis
from tests.cache.helpers import MODEL, make_bundle

PASSWORD = "s3cret-generated-by-gati-up"
ENV = ("REDIS_URL", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_TLS_CA", "SIGNING_KEYS")


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """(run dir, Redis URL) of a recorded stack whose Redis wants PASSWORD."""
    for var in ENV:  # as on a machine that never set them
        monkeypatch.delenv(names.ENV_PREFIX + var, raising=False)
    port = free_port()
    run_dir = tmp_path / "stack" / st.DEFAULT_RUN_DIR
    proc = start_redis(port, run_dir / "redis", PASSWORD)
    url = f"redis://127.0.0.1:{port}/0"
    record = st.ProcessRecord(
        name="redis",
        address=f"127.0.0.1:{port}",
        check=st.CHECK_REDIS,
        pid=proc.pid,
        pgid=proc.pid,
        create_time=st.process_create_time(proc.pid),
        ports={"redis": port},
    )
    st.save(
        st.StackState(
            run_dir=str(run_dir),
            complete=True,
            redis_url=url,
            redis_password=PASSWORD,
            signing_keys=str(generate_signing_keys(run_dir / "keys")),
            processes=[record],
        )
    )
    try:
        yield run_dir, url
    finally:
        proc.stop()


def stack_store(url: str) -> BundleStore:
    return BundleStore(url, PASSWORD)


def test_the_redis_really_wants_the_password(stack: tuple[Path, str]) -> None:
    _, url = stack
    with pytest.raises(redis.AuthenticationError):
        BundleStore(url).models()


def test_publish_and_rollback_find_the_stack_in_the_current_directory(
    stack: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir, url = stack
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    monkeypatch.chdir(run_dir.parent)  # where `gati up` ran: .gati/ is here
    assert gati_main(["probes", "publish", "--bundle", str(bundle_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1"
    assert f"using the Redis of the `gati up` stack in {run_dir}: {url}" in err
    assert gati_main(["probes", "publish", "--bundle", str(bundle_dir)]) == 0
    assert capsys.readouterr().out.strip() == "2"

    assert gati_main(["probes", "rollback", "--bundle-version", "1", "--model", MODEL]) == 0
    store = stack_store(url)
    try:
        assert store.versions(MODEL) == [1, 2] and store.pointer(MODEL) == 1
    finally:
        store.close()


def test_publish_to_the_stack_signs_with_its_key(
    stack: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack's cache service checks signatures with the key `gati up` made: a bundle
    published to it unsigned would be refused, so publish signs with that key."""
    run_dir, url = stack
    state = st.load(run_dir)
    assert state is not None and state.signing_keys
    monkeypatch.chdir(run_dir.parent)
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    assert gati_main(["probes", "publish", "--bundle", str(bundle_dir)]) == 0
    store = stack_store(url)
    try:
        stored = store.fetch(MODEL, 1)
    finally:
        store.close()
    assert stored is not None
    key_id, _, _ = split_seal(stored)
    assert key_id == Keyring.load(state.signing_keys).signing_id
    Keyring.load(state.signing_keys).unseal(stored)  # raises if not signed by the stack's key


def test_an_explicit_run_dir_is_used_from_anywhere(
    stack: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir, url = stack
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)  # no .gati here
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--run-dir", str(run_dir)])
        == 0
    )
    assert capsys.readouterr().out.strip() == "1"
    store = stack_store(url)
    try:
        assert store.models() == [MODEL]
    finally:
        store.close()


def test_a_run_dir_without_a_stack_is_an_error_not_a_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv(names.ENV_PREFIX + "REDIS_URL", raising=False)
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    empty = tmp_path / "empty"
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--run-dir", str(empty)]) == 2
    )
    assert f"no `gati up` stack with a Redis is recorded in {empty}" in capsys.readouterr().err


def test_an_explicit_url_wins_and_never_gets_the_stack_password(
    stack: tuple[Path, str],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    run_dir, url = stack
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    monkeypatch.chdir(run_dir.parent)
    # the other Redis has no password: sending the stack's would fail its AUTH
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url]) == 0
    )
    assert "gati up" not in capsys.readouterr().err
    other = BundleStore(redis_url)
    stack_side = stack_store(url)
    try:
        assert other.models() == [MODEL] and stack_side.models() == []
    finally:
        other.close()
        stack_side.close()
