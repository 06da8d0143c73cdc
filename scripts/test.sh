#!/usr/bin/env bash
# Sets up everything and runs the whole suite: lint, types, unit and integration tests.
# Integration tests start their own brokers and servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh full
export KERAS_BACKEND=torch OMP_NUM_THREADS=1
.venv/bin/ruff check src tests bench
.venv/bin/mypy
# one worker more than cores: the suite waits on brokers and processes about half of its time
# (a loaded run: 42 min of CPU in 42 min on two cores); a test file's tests run together (they
# share module fixtures), docs blocks one by one, the slowest files first (tests/conftest.py:
# work_unit, SLOWEST_FIRST)
exec .venv/bin/pytest -q -p no:cacheprovider -n "$(( $(nproc) + 1 ))" --dist loadscope \
  --no-loadscope-reorder "$@"
