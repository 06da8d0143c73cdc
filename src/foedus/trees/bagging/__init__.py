"""Federated tree bagging: clients grow whole ensembles locally; the server merges their members.

- :mod:`~foedus.trees.bagging.header`: the ``meta`` header both packed formats share.
- :mod:`~foedus.trees.bagging.packed_forest`: scikit-learn trees as ten named arrays.
- :mod:`~foedus.trees.bagging.packed_boosters`: XGBoost boosters as five named arrays.
- :mod:`~foedus.trees.bagging.sklearn_adapter`: ``sklearn-random-forest``, ``sklearn-extra-trees``.
- :mod:`~foedus.trees.bagging.xgboost_adapter`: ``xgboost-bagging``.
- :mod:`~foedus.trees.bagging.aggregator`: ``tree-bagging``, which merges either format.

The formats need numpy only, so a server aggregates without scikit-learn or XGBoost installed.
"""
