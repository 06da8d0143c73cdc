#!/usr/bin/env bash
# Build the benchmark's own virtual environment with Flower (and Ray) in it.
#
# Flower is never a dependency of foedus: it lives only in bench/vs_flower/.venv-flower, which
# is git-ignored. torch is pinned and installed FIRST so that pip never resolves a bare `torch`
# (which would pull a CUDA build of several GB); flwr and scikit-learn then find it satisfied.
#
# Usage: bash bench/vs_flower/setup.sh [PYTHON]    (default: python3.11 or python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-flower"
python="${1:-$(command -v python3.11 || command -v python3)}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"   # the CPU wheel, from the machine's find-links
"$venv/bin/pip" install --quiet "flwr[simulation]" scikit-learn psutil
"$venv/bin/python" - <<'PY'
import flwr, ray, sklearn, torch
print(f"flower venv ready: flwr {flwr.__version__}, ray {ray.__version__}, "
      f"torch {torch.__version__}, scikit-learn {sklearn.__version__}")
PY
