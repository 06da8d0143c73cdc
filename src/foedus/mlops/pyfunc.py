"""foedus global models as MLflow models that MLflow itself can load and serve.

A model logged by :class:`~foedus.mlops.mlflow.MlflowTracker` is an MLflow model directory with
two flavours in its ``MLmodel`` file:

* ``python_function`` with ``loader_module: foedus.mlops.pyfunc``: ``mlflow.pyfunc.load_model``
  (and ``mlflow models serve``) import this module and call :func:`_load_pyfunc`, which rebuilds
  the job's model adapter (registered model type, its parameters, the data spec, the seed) and
  loads the global model's arrays into it. No pickle anywhere: the arrays are the foedus wire
  format (checksummed), the recipe is JSON, so loading a registered model runs only foedus code.
* ``foedus``: the model type, the data spec and the format, for code that wants the arrays
  (``load_model_version``) rather than predictions.

The signature says what ``predict`` takes and returns: a float32 tensor ``(-1, n_features)``,
and class labels (int64) for classifiers or values (float64) for regressors.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.core.params import Params
from foedus.data.datasets import DataSpec
from foedus.mlops.modelfile import MODEL_FILE, decode_model, encode_model
from foedus.models.base import ModelAdapter, build_model

#: the flavour naming foedus models in ``MLmodel``, and its data directory under ``data/``
FLAVOR = "foedus"
DATA_DIR = "foedus"
RECIPE_FILE = "recipe.json"
LOADER_MODULE = "foedus.mlops.pyfunc"


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild a job's model adapter without the job: what ``build_model`` needs."""

    model_type: str
    data_spec: DataSpec
    model_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps({"model_type": self.model_type, "model_params": self.model_params,
                           "seed": self.seed, "data_spec": asdict(self.data_spec)},
                          default=str)

    @classmethod
    def from_json(cls, text: str) -> ModelRecipe:
        raw = json.loads(text)
        spec = raw["data_spec"]
        data_spec = DataSpec(
            n_features=int(spec["n_features"]), classes=tuple(int(c) for c in spec["classes"]),
            task=str(spec.get("task", "classification")),
            feature_names=tuple(spec.get("feature_names", ())),
            class_names=tuple(spec.get("class_names", ())),
        )
        return cls(str(raw["model_type"]), data_spec, dict(raw.get("model_params", {})),
                   int(raw.get("seed", 0)))

    def build(self, params: Params) -> ModelAdapter:
        """A fresh adapter holding ``params``."""
        adapter = build_model(self.model_type, self.data_spec, self.seed, **self.model_params)
        adapter.set_params(params)
        return adapter


def predict(adapter: ModelAdapter, x: np.ndarray, spec: DataSpec) -> np.ndarray:
    """Predictions of any foedus adapter: class labels for classifiers, values for regressors.

    Adapters share no ``predict`` method (training and evaluation are their contract), so this
    asks them in the order they can answer: their own ``predict`` (tree ensembles), a torch
    ``module``, or the wrapped estimator's ``predict`` (scikit-learn, Keras). Scores with one
    column per class become the label of the best class.
    """
    rows = np.asarray(x, dtype=np.float32)
    own = getattr(adapter, "predict", None)
    module = getattr(adapter, "module", None)
    estimator = getattr(adapter, "model", None)
    if callable(own):
        out = np.asarray(own(rows))
    elif module is not None:
        torch = require("torch", "torch")
        module.eval()
        with torch.no_grad():
            out = module(torch.from_numpy(rows)).cpu().numpy()
    elif estimator is not None and callable(getattr(estimator, "predict", None)):
        out = np.asarray(estimator.predict(rows))
    else:
        raise ConfigError(f"{type(adapter).__name__} offers no way to predict "
                          "(no predict(), torch module or estimator)")
    if spec.task == "regression":
        return np.asarray(out, dtype=np.float64).reshape(len(rows))
    if out.ndim == 2:
        out = np.asarray(spec.classes)[np.argmax(out, axis=1)]
    return np.asarray(out).astype(np.int64).reshape(len(rows))


class FoedusPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: one adapter with the global model loaded."""

    def __init__(self, recipe: ModelRecipe, params: Params) -> None:
        self.recipe = recipe
        self.adapter = recipe.build(params)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        if isinstance(values, dict) and len(values) == 1:  # a named tensor
            values = next(iter(values.values()))
        return predict(self.adapter, np.asarray(values), self.recipe.data_spec)


def _load_pyfunc(data_path: str) -> FoedusPyfunc:
    """MLflow's entry point for ``loader_module`` models (``data_path`` is ``data/foedus``)."""
    root = Path(data_path)
    recipe = ModelRecipe.from_json((root / RECIPE_FILE).read_text())
    return FoedusPyfunc(recipe, decode_model((root / MODEL_FILE).read_bytes()))


def signature(recipe: ModelRecipe) -> Any:
    """The MLflow signature of a recipe's models (tensor in, labels or values out)."""
    schema = require("mlflow.types.schema", "mlflow")
    sig = require("mlflow.models.signature", "mlflow")
    spec = recipe.data_spec
    out = np.dtype("float64") if spec.task == "regression" else np.dtype("int64")
    return sig.ModelSignature(
        inputs=schema.Schema([schema.TensorSpec(np.dtype("float32"), (-1, spec.n_features))]),
        outputs=schema.Schema([schema.TensorSpec(out, (-1,))]),
    )


def save_model(path: str | Path, params: Params, recipe: ModelRecipe, *, job_id: str,
               round: int) -> None:
    """Write an MLflow model directory at ``path`` (which must not exist yet)."""
    pyfunc = require("mlflow.pyfunc", "mlflow")
    models = require("mlflow.models", "mlflow")
    mlflow = require("mlflow", "mlflow")
    with tempfile.TemporaryDirectory(prefix="foedus-pyfunc-") as tmp:
        data = Path(tmp) / DATA_DIR
        data.mkdir()
        (data / MODEL_FILE).write_bytes(encode_model(params, job_id=job_id, round=round))
        (data / RECIPE_FILE).write_text(recipe.to_json())
        model = models.Model()
        model.add_flavor(FLAVOR, model_type=recipe.model_type, data=f"data/{DATA_DIR}",
                         model_file=MODEL_FILE, job_id=job_id, round=round,
                         task=recipe.data_spec.task)
        pyfunc.save_model(
            str(path), loader_module=LOADER_MODULE, data_path=str(data), mlflow_model=model,
            signature=signature(recipe),
            # stated, not inferred: inference would load the model in a subprocess
            pip_requirements=[_requirement("foedus"), f"mlflow=={mlflow.__version__}"],
        )


def _requirement(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package
