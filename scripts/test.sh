#!/usr/bin/env bash
# Sets up everything and runs the whole suite: lint, types, unit and integration tests.
# Integration tests start their own brokers and servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh full
export KERAS_BACKEND=torch OMP_NUM_THREADS=1
.venv/bin/ruff check src tests bench
.venv/bin/mypy
# One worker per core: most tests wait on brokers and subprocesses, so two workers nearly halve
# the suite's time on two cores. An idle worker takes tests from a busy one (worksteal): with
# whole files per worker, the few files that hold minutes of tests kept one worker busy alone.
exec .venv/bin/pytest -q -p no:cacheprovider -n auto --dist worksteal "$@"
