"""How many copies of the model a simulated job holds at once (docs/architecture.md, "Model
copies per actor").

numpy reports its buffers to ``tracemalloc``: the peak of the memory traced during a run,
less what was traced before it, divided by the model's size is the most model copies alive at
once outside torch (torch's own tensors, the worker's model with its gradients and momentum
and the evaluator's model, are not traced). Twenty clients, and ``max_held_mb`` below the
model's size, as for any model of 16 MB or more: holding updates, or handing them over in
batches, would show.
"""

from __future__ import annotations

import tracemalloc

import pytest

from foedus.config.spec import JobSpec
from foedus.sim import run_simulation_sync

HIDDEN = 600
MODEL_BYTES = (64 * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN + HIDDEN * 10 + 10) * 4  # 1.6 MB
#: measured 6.4: the server's global model, FedAvg's running sum, the buffer it folds into
#: and a past mean, the update in flight, and what the run itself builds while traced (the
#: initial model's copies, the data and its float64 intermediates, about 1.5 models' worth);
#: updates waiting in the server's inbox (14.4 with the runtime's default inbox of 16, see
#: foedus.sim.engine.SIM_QUEUE), held by FedAvg or handed over in batches would show
BOUND = 9


def test_a_simulated_job_holds_a_bounded_number_of_model_copies() -> None:
    pytest.importorskip("torch")
    job = JobSpec.from_dict({
        "job_id": "copies", "rounds": 2, "clients": {"count": 20},
        "data": {"partition": "iid"},
        "model": {"type": "torch-mlp", "params": {"hidden": [HIDDEN, HIDDEN]}},
        "aggregator": {"type": "fedavg", "params": {"max_held_mb": 1}},
    })
    run_simulation_sync(job, backend="thread", workers=1)  # warm: imports, caches
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run_simulation_sync(job, backend="thread", workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.final_metrics
    copies = (peak - before) / MODEL_BYTES
    assert 1 <= copies <= BOUND, f"{copies:.1f} model copies alive at once"
