"""Regenerate the web console's screenshots in docs/console/ (docs/console.md shows them).

They are taken by the console's real-browser test at its end, from the pages it has just
driven (a federation of two sites, a finished, a refused and a cancelled job), so they show
what the console really renders today, never a mock-up:

    .venv/bin/python scripts/console_screenshots.py

Needs what the test needs: Mosquitto, PostgreSQL, Chromium and chromedriver (scripts/setup.sh
installs them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "console"


def main() -> int:
    env = {**os.environ, "FOEDUS_CONSOLE_SCREENSHOTS": str(OUT),
           "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/federation/test_console.py"], cwd=ROOT, env=env)
    if done.returncode == 0:
        print(f"screenshots in {OUT.relative_to(ROOT)}/: "
              f"{', '.join(sorted(p.name for p in OUT.glob('*.png')))}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
