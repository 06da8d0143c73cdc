"""The ``<prefix>/meta`` header both packed ensemble formats of tree bagging start with.

Packed forests (:mod:`foedus.trees.bagging.packed_forest`) and packed boosters
(:mod:`foedus.trees.bagging.packed_boosters`) describe their schema the same way, four integers
``[format version, n_features, n_values, task code]``, so the ``tree-bagging`` aggregator can
check an update against the global model's schema whichever kind of ensemble it is. The header
lives here, apart from either format, so neither format module depends on the other.
"""

from __future__ import annotations

import numpy as np

from foedus.core.errors import RejectedUpdate
from foedus.core.params import Params

FORMAT_VERSION = 1
#: the tasks a packed ensemble can serve; the task code in the header is an index into this
TASKS = ("classification", "regression")


def check_meta(params: Params, names: tuple[str, ...], prefix: str, reason: str, *,
               n_features: int | None, n_values: int | None,
               task: str | None) -> tuple[int, int, str]:
    """Check the names and the ``<prefix>/meta`` header ``[version, n_features, n_values,
    task]`` that packed forests and packed boosters share; return the last three. ``reason``
    names a malformed header (e.g. ``bad_forest``); a header that disagrees with the expected
    ``n_features``/``n_values``/``task`` is ``wrong_shape``."""
    if tuple(sorted(params)) != tuple(sorted(names)):
        missing = sorted(set(names) - set(params))
        extra = sorted(set(params) - set(names))
        raise RejectedUpdate("wrong_names", f"not a packed {prefix}: missing {missing}, "
                                            f"unexpected {extra}")
    meta = np.asarray(params[f"{prefix}/meta"])
    if meta.dtype.kind not in "iu" or meta.shape != (4,) or meta[0] != FORMAT_VERSION:
        raise RejectedUpdate(reason, f"{prefix}/meta must be 4 integers [version="
                                     f"{FORMAT_VERSION}, n_features, n_values, task], got "
                                     f"{meta.tolist()}")
    got_features, got_values, task_code = (int(v) for v in meta[1:])
    if got_features < 1 or got_values < 1 or task_code not in (0, 1):
        raise RejectedUpdate(reason, f"invalid {prefix}/meta {meta.tolist()}")
    got_task = TASKS[task_code]
    for label, want, got in (("n_features", n_features, got_features),
                             ("n_values", n_values, got_values), ("task", task, got_task)):
        if want is not None and want != got:
            raise RejectedUpdate("wrong_shape", f"{prefix} {label} is {got!r}, expected {want!r}")
    if got_task == "regression" and got_values != 1:
        raise RejectedUpdate(reason, "regression has one value per prediction")
    return got_features, got_values, got_task
