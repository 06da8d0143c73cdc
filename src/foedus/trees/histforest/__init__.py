"""The federated forest: ONE random forest grown by all clients together on summed histograms.

- :mod:`~foedus.trees.histforest.format`: the global model's arrays, settings and validation.
- :mod:`~foedus.trees.histforest.measure`: what a client computes from its rows (sketches,
  bootstrap weights, histograms of the open nodes).
- :mod:`~foedus.trees.histforest.predict`: routing rows through the trees, predictions.
- :mod:`~foedus.trees.histforest.splits`: the split maths the server applies to summed
  histograms.
- :mod:`~foedus.trees.histforest.adapter`: ``federated-forest``, the client's adapter.
- :mod:`~foedus.trees.histforest.aggregator`: ``forest-histograms``, which grows the forest.
"""
