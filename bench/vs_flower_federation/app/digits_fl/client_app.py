"""The ClientApp: one epoch of SGD on this SuperNode's share (``partition-id`` in its
node config), starting from the global arrays; replies with the new arrays and the number of
examples FedAvg weighs them by."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_fl import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    index = int(context.node_config["partition-id"])
    task.stamp(str(context.run_config["stamp-path"]), f"train-{index}")
    data = task.load(str(context.node_config["data-path"]))
    rnd = int(msg.content["config"]["server-round"])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    clf = task.model(arrays[0], arrays[1], data["classes"])
    x, y = task.share(data, index)
    task.train(clf, x, y, data["classes"], task.round_seed(index, rnd))
    content = RecordDict({
        "arrays": ArrayRecord([clf.coef_, clf.intercept_]),
        "metrics": MetricRecord({"num-examples": len(y)}),
    })
    return Message(content=content, reply_to=msg)
