"""Tree models, one package per family, each with its wire format, maths, adapter and aggregator.

Trees have no fixed shape, so they do not federate by averaging parameters: each family brings
the format its updates travel in, the client-side adapter and the server-side aggregator that
understands them, and these only make sense together. Keeping a family in one place lets a
reader (or a reviewer of a change to the format) see every party that reads it.

- :mod:`foedus.trees.bagging`: every client grows whole ensembles on its own rows (scikit-learn
  random forests or extra trees, XGBoost boosters); the ``tree-bagging`` aggregator merges them.
- :mod:`foedus.trees.histforest`: one random forest grown by all clients together, every split
  chosen on histograms summed over clients (``federated-forest`` with ``forest-histograms``).

Nothing is imported here: the modules that register plugins are listed as entry points
(``pyproject.toml``) and imported on first lookup, and the adapters' optional libraries
(scikit-learn, XGBoost) must not load with the package. This package may import ``core``,
``data``, ``models.base`` and ``aggregate.base``; nothing below it imports this package.
"""
