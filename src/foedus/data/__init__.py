"""Local datasets and the partitioners that turn one dataset into many clients' shares."""

from foedus.data.datasets import Dataset, DataSpec, datasets, load_dataset
from foedus.data.partition import dirichlet_partition, iid_partition, partition

__all__ = [
    "DataSpec", "Dataset", "datasets", "dirichlet_partition", "iid_partition", "load_dataset",
    "partition",
]
