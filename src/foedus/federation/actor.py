"""The process the coordinator starts for a job's server: ``python -m foedus.federation.actor
JOB.yaml --records FILE --result FILE``.

It is ``foedus server`` (the same :func:`foedus.runner.run_server`) plus two files the
coordinator reads, because a long-running service needs the rounds *as they end* (``foedus
server`` prints a progress bar for people) and an outcome it can still read after its own
restart, when this process is no longer its child and its exit status is lost:

* ``--records``: one JSON line per round record, appended and flushed as the round ends;
* ``--result``: written once at the end (atomically): ``{"status": 0|1|2, "summary"|"error"}``,
  0 when the job produced a model, 1 when it ran without one, 2 for a job it refuses.

The job file carries ``checkpoint_dir``, so a restarted server resumes after its last round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foedus.config.spec import load_job
from foedus.core.errors import FoedusError
from foedus.roles.server import RoundRecord
from foedus.runner import run_server


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foedus.federation.actor")
    parser.add_argument("job")
    parser.add_argument("--records", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    records = Path(args.records)
    result_path = Path(args.result)

    def on_round(record: RoundRecord) -> None:
        with records.open("a") as f:
            f.write(json.dumps(record.to_dict()) + "\n")
            f.flush()

    try:
        result = asyncio.run(run_server(load_job(args.job), on_round=on_round))
    except FoedusError as exc:
        _write_atomic(result_path, {"status": 2, "error": str(exc)})
        print(f"foedus: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a crash is reported as the job's failure, with its reason
        _write_atomic(result_path, {"status": 1, "error": f"{type(exc).__name__}: {exc}"})
        raise
    summary = result.summary()
    summary.pop("history", None)  # the rounds are in --records already
    status = 1 if result.failure else 0
    _write_atomic(result_path, {"status": status, "summary": summary,
                                **({"error": result.failure} if result.failure else {})})
    return status


if __name__ == "__main__":
    sys.exit(main())
