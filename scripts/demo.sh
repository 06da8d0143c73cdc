#!/usr/bin/env bash
# Sets up foedus and runs the demo: 10 non-IID clients on digits, FedAvg, in-process transport.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
exec .venv/bin/foedus demo "$@"
