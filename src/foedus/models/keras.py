"""Keras 3 adapter: any compiled ``keras.Model``, on whichever backend Keras is configured for.

Weights are exchanged as ``"{index:03d}/{variable name}"`` over ``model.weights`` (trainable and
non-trainable, so BatchNormalization's moving statistics travel too). Keras's own variable
*paths* embed auto-numbered layer names (``dense_7``) that differ between two copies of the same
model built in one process, so they cannot serve as names; the position plus the short variable
name is the same for every copy of an architecture, and shapes are checked on load.

FedProx (Li et al., 2020): with ``mu > 0`` every trainable variable gets a regulariser adding
``mu/2 * ||w - w_global||^2`` to the training loss, where ``w_global`` is what the last
:meth:`KerasAdapter.set_params` loaded. Keras adds variable regularisers to the loss at each
step, so this works for any model and backend without recompiling; a user regulariser already
on a variable is kept and added to. The term is switched off during :meth:`evaluate`, so
reported evaluation losses are comparable with and without FedProx.

Memory: repeated ``fit``/``evaluate`` calls on one compiled model reuse its cached train and
test functions; this adapter never recompiles or rebuilds, which keeps resident memory flat
across rounds (checked by a 20-round test).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import ModelAdapter, mlp_options, models

#: the extra this module's plugins need (`pip install foedus[keras]`), for `foedus plugins`
REQUIRES_EXTRA = "keras"


def _import_keras() -> Any:
    """Import keras, telling a missing package apart from a missing *backend*.

    Keras 3 picks its backend at first import (``KERAS_BACKEND``, default TensorFlow); without
    TensorFlow installed the import fails, which deserves a different hint than "install keras".
    """
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        return require("keras", "keras")  # raises MissingExtra naming the extra
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None \
            and importlib.util.find_spec("torch") is not None:
        # Keras 3's default backend is TensorFlow; foedus installs torch, so use that unless
        # the user chose otherwise (read once, when keras is first imported)
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as exc:
        raise ConfigError(
            f"keras is installed but cannot load its backend ({exc}); set the environment "
            "variable KERAS_BACKEND=torch (or jax/tensorflow) before keras is first imported"
        ) from exc
    return keras


class _Proximal:
    """``mu/2 * ||w - anchor||^2`` plus whatever regulariser the variable already had."""

    def __init__(self, keras: Any, anchor: Any, mu: Any, inner: Any) -> None:
        self.keras, self.anchor, self.mu, self.inner = keras, anchor, mu, inner

    def __call__(self, weight: Any) -> Any:
        ops = self.keras.ops
        term = 0.5 * self.mu * ops.sum(ops.square(weight - self.anchor))
        return term if self.inner is None else term + self.inner(weight)


class KerasAdapter(ModelAdapter):
    """Federates a compiled Keras 3 model (``model.compile(...)`` must have been called)."""

    def __init__(
        self, model: Any, *, batch_size: int = 32, mu: float = 0.0, seed: int = 0,
    ) -> None:
        keras = _import_keras()
        if not getattr(model, "compiled", False):
            raise ConfigError("the Keras model must be compiled (call model.compile) first")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if mu < 0:
            raise ConfigError(f"the FedProx mu must be non-negative, got {mu}")
        if not model.weights:
            raise ConfigError("the Keras model has no weights yet: build it with an Input")
        self.keras = keras
        self.model = model
        self.batch_size = batch_size
        self.seed = seed
        self.mu = mu
        self.names = [f"{i:03d}/{v.name}" for i, v in enumerate(model.weights)]
        self._mu = keras.Variable(0.0, trainable=False, dtype="float32", name="fedprox_mu")
        self._anchors: list[Any] = []
        self._rng = np.random.default_rng(seed)
        if mu > 0:
            for v in model.trainable_weights:
                anchor = keras.Variable(
                    keras.ops.convert_to_numpy(v.value), trainable=False, dtype=v.dtype,
                    name="fedprox_anchor",
                )
                v.regularizer = _Proximal(keras, anchor, self._mu, v.regularizer)
                self._anchors.append((v, anchor))

    def begin_round(self, seed: int) -> None:
        """Zero the optimiser's moments and step counter (a fresh optimiser, as if just built;
        its learning rate is kept) and reseed the shuffle, so a round depends only on the global
        model and the seed, even when one adapter trains many simulated clients."""
        self._rng = np.random.default_rng(seed)
        for v in self.model.optimizer.variables:
            if not v.name.endswith("learning_rate"):
                v.assign(self.keras.ops.zeros(v.shape, dtype=v.dtype))

    def get_params(self) -> dict[str, np.ndarray]:
        return {
            name: np.array(self.keras.ops.convert_to_numpy(v.value))
            for name, v in zip(self.names, self.model.weights, strict=True)
        }

    def set_params(self, params: Params) -> None:
        if set(params) != set(self.names):
            raise ConfigError(
                f"weights mismatch: missing {sorted(set(self.names) - set(params))}, "
                f"unexpected {sorted(set(params) - set(self.names))}"
            )
        for name, v in zip(self.names, self.model.weights, strict=True):
            value = np.asarray(params[name])
            if tuple(value.shape) != tuple(v.shape):
                raise ConfigError(f"{name!r} has shape {value.shape}, expected {tuple(v.shape)}")
            v.assign(value.astype(v.dtype))
        for v, anchor in self._anchors:  # FedProx: the global model is the anchor
            anchor.assign(v.value)

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        self._mu.assign(self.mu if self._anchors else 0.0)
        x, y = np.asarray(data.x), np.asarray(data.y)
        try:
            if epochs == 1:  # shuffle with our seeded generator (Keras's own is global)
                order = self._rng.permutation(len(y))
                x, y = x[order], y[order]
            history = self.model.fit(
                x, y, epochs=epochs, batch_size=self.batch_size, shuffle=epochs > 1, verbose=0,
            )
        finally:
            self._mu.assign(0.0)
        return {k: float(v[-1]) for k, v in history.history.items()}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        result = self.model.evaluate(
            np.asarray(data.x), np.asarray(data.y), batch_size=max(self.batch_size, 256),
            verbose=0, return_dict=True,
        )
        out = {k: float(v) for k, v in result.items()}
        for alias in ("sparse_categorical_accuracy", "compile_metrics"):
            if alias in out and "accuracy" not in out:
                out["accuracy"] = out.pop(alias)
        return out


@models.register("keras-mlp")
def keras_mlp(
    spec: DataSpec, seed: int = 0, hidden: tuple[int, ...] | list[int] = (64,),
    lr: float = 0.01, batch_size: int = 32, batch_norm: bool = False, optimizer: str = "adam",
    mu: float = 0.0,
) -> KerasAdapter:
    """A Dense network for tabular or flattened image data, seeded per layer (no global seed)."""
    hidden = mlp_options(hidden, lr, batch_size, mu)
    keras: Any = _import_keras()
    if spec.task != "classification":
        raise ConfigError(f"keras-mlp is a classifier; the dataset's task is {spec.task!r}")
    if tuple(spec.classes) != tuple(range(len(spec.classes))):
        raise ConfigError(f"keras-mlp needs labels 0..K-1, got classes {spec.classes}")
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    if optimizer not in optimizers:
        raise ConfigError(f"optimizer must be one of {', '.join(optimizers)}, got {optimizer!r}")
    layers: list[Any] = [keras.Input((spec.n_features,))]
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(
            int(width), kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
        ))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation("relu"))
    layers.append(keras.layers.Dense(
        len(spec.classes), activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + len(hidden)),
    ))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=optimizers[optimizer](learning_rate=lr),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"],
    )
    return KerasAdapter(model, batch_size=batch_size, mu=mu, seed=seed)
