"""Local datasets and the partitioners that turn one dataset into many clients' shares.

Importing this package registers the bundled datasets and the ``csv`` and ``parquet`` file
loaders (:mod:`foedus.data.files`). A job's data as a whole (shares, the server's evaluation set,
per-client files) is assembled by :mod:`foedus.data.shares`.
"""

from foedus.data import files as files
from foedus.data.datasets import Dataset, DataSpec, datasets, load_dataset, split_dataset
from foedus.data.partition import (
    column_partition,
    dirichlet_partition,
    iid_partition,
    partition,
    quantity_partition,
)

__all__ = [
    "DataSpec", "Dataset", "column_partition", "datasets", "dirichlet_partition",
    "iid_partition", "load_dataset", "partition", "quantity_partition", "split_dataset",
]
