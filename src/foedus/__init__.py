"""foedus: federated learning as pipes and filters.

The user layer is what ``foedus.__all__`` lists; extenders subclass :class:`Pod`,
:class:`Filter`, :class:`Stage`, :class:`Aggregator`, :class:`ModelAdapter`,
:class:`Transport` and :class:`Topology`. The list is pinned by a test: adding a name is a
decision, removing one is a breaking change.
"""

import foedus.plugins  # noqa: F401  (installs the registries' plugin loader)
from foedus.aggregate.base import Aggregator, aggregators
from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.config.spec import JobSpec, load_job
from foedus.config.topology import Topology, topologies
from foedus.core.errors import (
    BudgetExhausted,
    CodecError,
    ConfigError,
    FoedusError,
    GraphError,
    MissingExtra,
    PodError,
    PrivacyError,
    RejectedUpdate,
    TransportClosed,
    TransportError,
)
from foedus.core.filter import Chain, Filter, Stage, stages
from foedus.core.graph import Graph
from foedus.core.message import Header, Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.runtime import Runtime
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.partition import partition
from foedus.models.base import ModelAdapter, build_model
from foedus.models.base import models as model_adapters
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.runner import JobResult, run_actors, run_job, run_job_sync
from foedus.transport.base import Subscription, Transport, transports
from foedus.transport.link import Downlink, Uplink
from foedus.transport.local import LocalTransport

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "BudgetExhausted",
    "Chain",
    "ClientPod",
    "CodecError",
    "ConfigError",
    "DataSpec",
    "Dataset",
    "Downlink",
    "FedAvg",
    "Filter",
    "FoedusError",
    "Graph",
    "GraphError",
    "Header",
    "JobResult",
    "JobSpec",
    "Kind",
    "LocalTransport",
    "Message",
    "MissingExtra",
    "ModelAdapter",
    "Pod",
    "PodError",
    "PrivacyError",
    "RejectedUpdate",
    "RoundRecord",
    "Runtime",
    "ServerPod",
    "Stage",
    "Subscription",
    "Topology",
    "Transport",
    "TransportClosed",
    "TransportError",
    "Uplink",
    "Wire",
    "aggregators",
    "build_model",
    "decode",
    "encode",
    "load_dataset",
    "load_job",
    "model_adapters",
    "partition",
    "run_actors",
    "run_job",
    "run_job_sync",
    "stages",
    "topologies",
    "transports",
]
