"""Vertical federated learning: parties that hold different features of the same people.

* :mod:`foedus.vertical.psi`: entity alignment by private set intersection (openmined-psi);
* :mod:`foedus.vertical.linear`: the model (logistic or linear regression on every party's
  columns) and its plain, centralized twin;
* :mod:`foedus.vertical.paillier`: the additively homomorphic arithmetic (phe's Paillier keys)
  on fixed-point numbers, and how ciphertexts travel as fixed-width byte arrays;
* :mod:`foedus.vertical.pods`: the label party and the feature parties as pods.

The ``vertical`` topology (:mod:`foedus.topology.vertical`) wires them from a job file.
Nothing here imports the optional libraries at import time (they are the ``vertical`` extra),
so ``import foedus`` never needs them.
"""
