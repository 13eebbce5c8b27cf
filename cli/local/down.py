"""`gati down`: stop everything `gati up` started in a run directory, and forget it.

Each process group gets SIGTERM, last started first (the inference service before the cache
it streams to, the broker and Redis last), then up to --timeout seconds to drain, then
SIGKILL. An external Redis (`gati up --redis-url`) is left alone. Running it again, or with
nothing running, does nothing and succeeds. The logs stay in the run directory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TextIO

from cli.local import state as st

DEFAULT_TIMEOUT = 30.0  # longer than any service's drain grace (inference: 10 s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=st.DEFAULT_RUN_DIR, help="as given to `gati up`")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds from SIGTERM to SIGKILL, per process",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = st.resolve_run_dir(args.run_dir)
    try:
        return stop(run_dir, args.timeout, sys.stdout)
    except st.StackBusyError as exc:
        print(f"gati down: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"gati down: cannot read {st.state_path(run_dir)}: {exc}", file=sys.stderr)
        return 1


def stop(run_dir: Path, timeout: float = DEFAULT_TIMEOUT, out: TextIO = sys.stdout) -> int:
    """Stop the stack recorded in `run_dir`; 0 when nothing of it is left running."""
    if not st.state_path(run_dir).exists():  # checked before locking, which creates the dir
        print(f"nothing running in {run_dir}", file=out)
        return 0
    with st.locked(run_dir):
        state = st.load(run_dir)
        if state is None:  # another `gati down` finished while we waited
            print(f"nothing running in {run_dir}", file=out)
            return 0
        print(f"stopping gati in {run_dir}", file=out, flush=True)
        results = st.stop_all(state, timeout, out=out)
        left = [name for name, outcome in results if outcome.startswith("still running")]
        if left:
            print(f"gati down: could not stop {', '.join(left)}; state kept", file=sys.stderr)
            return 1
        st.remove(run_dir)
        # The private Redis's config file holds its password; nothing else lives there.
        shutil.rmtree(run_dir / "redis", ignore_errors=True)
    print(f"stopped; logs kept in {run_dir / st.LOG_DIR}", file=out)
    return 0
