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
# uv installs what pip would, in parallel and from a shared cache: minutes faster on a fresh
# machine. It is itself a pip package, so nothing but Python is needed.
[ -x .venv/bin/uv ] || pip install uv 2>&1 | grep -v "^WARNING: Location" || true
# Compiled: where PYTHONDONTWRITEBYTECODE is set (as on CI machines), Python never writes the
# .pyc files it would cache, and every process (the suite starts hundreds) compiles each module
# it imports, torch and scikit-learn included: that doubled the suite's time in a fresh clone.
install() { .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "$@"; }
compile_own() { .venv/bin/python -m compileall -q -j 0 src tests bench >/dev/null; }
if [ "$mode" = "core" ]; then
  install -e .
  compile_own
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
apt_job=""
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # in the background, beside the Python installs below; its status is checked at the end
  ( $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${need_apt[@]}" >/dev/null ) &
  apt_job=$!
fi
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build. The CPU
# build of 2.13.0 lies on this kind of machine in /opt/wheels, where pip's configuration finds it
# (uv does not look there, so it is given the file); elsewhere pip resolves torch==2.13.0.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  tag=$(.venv/bin/python -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-"$tag"-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$wheel" ]; then install "$wheel"; else pip install torch==2.13.0; fi
fi
install -e ".[all,test]"
compile_own
if [ -n "$apt_job" ]; then wait "$apt_job" || { echo "setup: apt-get install ${need_apt[*]} failed" >&2; exit 1; }; fi
