#!/usr/bin/env bash
# Generate the Python stubs in gati/api from proto/. With --check, generate into a
# temporary folder and fail if the committed stubs differ (they are the client stubs
# users import, so they must never drift from proto/).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
out_pkg=${1:-gati/api}
py=.venv/bin/python
protos=$(cd proto && ls gati/api/*.proto)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd proto && ../$py -m grpc_tools.protoc -I. --python_out="$tmp" --pyi_out="$tmp" \
  --grpc_python_out="$tmp" $protos)
if [ $check -eq 1 ]; then
  if ! diff -r -x __init__.py -x __pycache__ -x '*.md' "$tmp/gati/api" "$out_pkg" >/dev/null; then
    echo "gati/api is out of date with proto/: run 'make proto' and commit" >&2
    diff -r -x __init__.py -x __pycache__ -x '*.md' "$tmp/gati/api" "$out_pkg" | head -20 >&2
    exit 1
  fi
  echo "generated stubs match proto/"
else
  cp "$tmp"/gati/api/*.py "$tmp"/gati/api/*.pyi "$out_pkg"/
  echo "stubs written to $out_pkg"
fi
