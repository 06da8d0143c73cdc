"""A global model as one file: the foedus wire format (checksummed, never unpickled).

MLflow artifacts, S3 objects and the model registry all store models this way, so a model saved
by one integration loads with another, and loading a model from a shared store runs no code.
"""

from __future__ import annotations

import numpy as np

from foedus.codec import decode, encode
from foedus.core.message import Kind, Message
from foedus.core.params import Params

MODEL_FILE = "global_model.foedus"


def encode_model(params: Params, *, job_id: str, round: int) -> bytes:
    """A global model as bytes; ``job_id`` and ``round`` travel in the header as provenance."""
    return encode(Message.create(
        Kind.MODEL, job_id=job_id, round=round, sender="foedus.mlops", params=params,
    ))


def decode_model(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a model written by :func:`encode_model` (writable copies)."""
    return {k: np.array(v) for k, v in decode(data).params.items()}
