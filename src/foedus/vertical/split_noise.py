"""Gaussian noise on split learning's embeddings and gradients, with its accounting: the
``split-noise`` pipeline stage of a ``model: split-nn`` vertical job.

What crosses between parties in split learning is not a model update but, per batch, each
feature party's embeddings of its rows (to the label party) and the loss's gradient with
respect to them (back). Both leak: embeddings are a learned function of one person's columns,
the gradient of a binary task's loss points one way for a positive and the other for a
negative label. This stage bounds both with the Gaussian mechanism:

* **embeddings** (``embedding_noise`` = z_e): each feature party clips every row's embedding
  to L2 norm ``embedding_clip`` (inside its bottom model's graph, so training sees the
  clipping) and adds ``N(0, (z_e C_e)^2)`` to each coordinate before it leaves (or before it
  is masked for secure sum);
* **gradients** (``gradient_noise`` = z_g): the label party clips every row's gradient
  (scaled to one example: ``batch_size`` times the row of the batch mean's gradient) to
  ``gradient_clip`` and adds ``N(0, (z_g C_g)^2)`` before sending it; with ``concat`` the
  whole row across every party's slice is clipped and noised together, then cut into slices.

**What the epsilon covers, exactly.** Each is a per-person guarantee at ``delta`` under the
*replace-one-value* adjacency (one person's columns at one feature party, resp. one person's
label, changed to anything), for the values the noise is applied to: every person's
embedding row is released once per epoch (training people in their batch, held-out people
in the epoch's evaluation), every training person's gradient row once per epoch, so after
``T`` epochs it is ``T`` Gaussian mechanisms of sensitivity ``2C`` composed (the project's
RDP accountant, :mod:`foedus.privacy.accountant`, with noise multiplier ``z / 2``). It covers
the label party's view of a feature party's columns (``dp_epsilon_embeddings``) and the
feature parties' view of the labels, even all of them together
(``dp_epsilon_gradients``). It does **not** cover the indirect paths: the bottom models are
trained on every row, so later embeddings of other people carry a trace of a person's
columns, and the top model is trained on every label, so other people's gradients carry a
trace of a person's label (closing them needs DP-SGD on both models, which this stage does
not do); nor does it cover predictions served after training, or who is in the
intersection (PSI's business).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from foedus.core.errors import ConfigError, PrivacyError
from foedus.core.filter import CLIP, NOISE, Stage, stages
from foedus.privacy.accountant import PrivacyAccountant, SamplingSpec

REQUIRES_EXTRA = "privacy"


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"pipeline.split-noise.{key}: expected a number > 0, got {value!r}")
    return float(value)


@stages.register("split-noise")
class SplitNoiseStage(Stage):
    """Clip-and-noise for split learning (module docstring: what it protects, what not).

    The stage has no update filters (split learning sends no updates); the vertical parties
    call :meth:`noise_embeddings` and :meth:`noise_gradients` on what they are about to send,
    and the label party adds :meth:`metrics` to every epoch's record.
    """

    privacy_operations: ClassVar[tuple[str, ...] | None] = (CLIP, NOISE)

    def __init__(self, embedding_clip: float = 1.0, embedding_noise: float | None = None,
                 gradient_clip: float = 1.0, gradient_noise: float | None = None,
                 delta: float = 1e-5) -> None:
        self.embedding_clip = _positive("embedding_clip", embedding_clip)
        self.embedding_noise = None if embedding_noise is None else \
            _positive("embedding_noise", embedding_noise)
        self.gradient_clip = _positive("gradient_clip", gradient_clip)
        self.gradient_noise = None if gradient_noise is None else \
            _positive("gradient_noise", gradient_noise)
        if self.embedding_noise is None and self.gradient_noise is None:
            raise ConfigError("pipeline.split-noise: give embedding_noise, gradient_noise or "
                              "both (noise multipliers); got neither")
        if isinstance(delta, bool) or not isinstance(delta, float | int) or not 0 < delta < 1:
            raise ConfigError(f"pipeline.split-noise.delta: expected a number in (0, 1), got "
                              f"{delta!r}")
        self.delta = float(delta)
        self._accountants = {
            name: PrivacyAccountant(noise_multiplier=z / 2, delta=self.delta,
                                    sampling=SamplingSpec(population=1, clients_per_round=1))
            for name, z in (("embeddings", self.embedding_noise),
                            ("gradients", self.gradient_noise)) if z is not None}

    @property
    def clip(self) -> float | None:
        """The embedding clip norm the bottom models apply (``None`` without embedding
        noise: clipping alone protects nothing)."""
        return self.embedding_clip if self.embedding_noise is not None else None

    def noise_embeddings(self, e: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Embeddings ``(rows, width)`` with their noise; refuses rows above the clip norm
        (noise calibrated to a norm the rows do not have protects nothing)."""
        if self.embedding_noise is None:
            return e
        norms = np.linalg.norm(np.asarray(e, np.float64), axis=1)
        if norms.size and norms.max() > self.embedding_clip * (1 + 1e-4):
            raise PrivacyError(f"an embedding row has norm {norms.max():.4g} above the clip "
                               f"norm {self.embedding_clip}: clip in the bottom model")
        std = self.embedding_noise * self.embedding_clip
        return (e + rng.normal(0.0, std, size=e.shape)).astype(np.float32)

    def noise_gradients(self, g: np.ndarray, batch: int, rng: np.random.Generator,
                        ) -> np.ndarray:
        """The batch mean's gradient rows ``(rows, width)``, each clipped (as one example's:
        times ``batch``) and noised."""
        if self.gradient_noise is None:
            return g
        per_example = np.asarray(g, np.float64) * batch
        norms = np.maximum(np.linalg.norm(per_example, axis=1, keepdims=True), 1e-12)
        clipped = per_example * np.minimum(1.0, self.gradient_clip / norms)
        std = self.gradient_noise * self.gradient_clip
        noised = (clipped + rng.normal(0.0, std, size=g.shape)) / batch
        return np.asarray(noised, np.float32)

    def metrics(self, epochs: int) -> dict[str, float]:
        """Epsilon of each noised direction after ``epochs`` epochs, and delta."""
        out = {f"dp_epsilon_{name}": a.epsilon(epochs) for name, a in self._accountants.items()}
        return out | {"dp_delta": self.delta}
