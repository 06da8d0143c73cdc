#!/usr/bin/env bash
# Sets up foedus in ./.venv on a fresh machine with nothing but Python 3.11+ (and root for apt).
#   scripts/setup.sh core   the package and what the demo needs
#   scripts/setup.sh full   everything the test suite needs: every extra, torch (CPU), brokers
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-core}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if [ "$mode" = "core" ]; then
  pip install -e . 2>&1 | grep -v "^WARNING: Location" || true
  exit 0
fi
if [ "$mode" != "full" ]; then echo "usage: scripts/setup.sh core|full" >&2; exit 2; fi

# System packages the integration tests start: Mosquitto (MQTT broker), stunnel (TLS in front of
# the Kafka broker), Prometheus (scrapes foedus's /metrics), PostgreSQL (the coordinator's
# database) and Chromium with its driver (the web console's browser tests).
need_apt=()
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_apt+=(stunnel4)
command -v prometheus >/dev/null || need_apt+=(prometheus)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromedriver >/dev/null || need_apt+=(chromium chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
pip install -e ".[all,test]" 2>&1 | grep -v "^WARNING: Location" || true
