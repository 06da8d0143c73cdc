"""The ServerApp: FedAvg over the three SuperNodes for ``num-server-rounds`` rounds, the global
model evaluated centrally on the test split after each round (as foedus's server does).

Every evaluation appends ``ROUND WALL-CLOCK-TIME ACCURACY`` to ``stamp-path``: run.py stops its
clock on the line of round 1 (the round's real end, stamped in the process that ends it), and
waits for the line ``done`` before it starts the next run. The ServerApp's start (``main``) and
each ClientApp's first train call (``train-N``) are stamped too, for the breakdown."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from digits_fl import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    stamp_path = str(context.run_config["stamp-path"])
    task.stamp(stamp_path, "main")
    data = task.load(str(context.run_config["data-path"]))
    classes = data["classes"]

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        coef, intercept = arrays.to_numpy_ndarrays()
        acc = float((task.model(coef, intercept, classes).predict(data["x_test"])
                     == data["y_test"]).mean())
        task.stamp(stamp_path, str(rnd), f"{acc:.4f}")
        return MetricRecord({"accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=3,
                      min_available_nodes=3)
    strategy.start(grid=grid, initial_arrays=ArrayRecord([data["init_coef"],
                                                          data["init_intercept"]]),
                   num_rounds=int(context.run_config["num-server-rounds"]),
                   evaluate_fn=evaluate)
    task.stamp(stamp_path, "done")
