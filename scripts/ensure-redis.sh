#!/usr/bin/env bash
# Make sure a redis-server binary exists: tests and `gati up` start their own instances.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server missing: installing it from Debian's packages" >&2
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
else
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The Debian package starts a system instance; gati never relies on it.
command -v redis-server >/dev/null
