"""The csv and parquet datasets read real files into numbers, map labels to class indices, and
refuse anything that would silently corrupt training with an error naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foedus.core.errors import ConfigError
from foedus.data.datasets import load_dataset
from foedus.data.files import read_table


def _frame(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "age": rng.integers(20, 80, rows),
        "dose": rng.normal(size=rows),
        "site": np.arange(rows) % 3,
        "outcome": np.where(np.arange(rows) % 2, "sick", "well"),
    })


def _write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".parquet":
        frame.to_parquet(path, engine="pyarrow", index=False)
    else:
        frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_file_loads_as_train_and_test_with_named_features_and_classes(
    tmp_path: Path, kind: str
) -> None:
    frame = _frame()
    path = _write(frame, tmp_path / f"table.{kind}")
    train, test, spec = load_dataset(kind, path=path, label="outcome", test_fraction=0.25, seed=1)
    assert (len(train), len(test)) == (30, 10)
    assert spec.feature_names == ("age", "dose", "site") and spec.n_features == 3
    assert spec.classes == (0, 1) and spec.class_names == ("sick", "well")
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    # every row's features come through unchanged, and its label maps to its class index
    both = np.concatenate([train.x, test.x])
    labels = np.concatenate([train.y, test.y])
    expected = frame[["age", "dose", "site"]].to_numpy(np.float32)
    order = np.lexsort(both.T[::-1])
    want = np.lexsort(expected.T[::-1])
    assert np.allclose(both[order], expected[want])
    assert labels[order].tolist() == [
        spec.class_names.index(v) for v in frame["outcome"].to_numpy()[want]
    ]


def test_same_seed_gives_the_same_split(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "t.csv")
    a = load_dataset("csv", path=path, label="outcome", seed=3)[1]
    b = load_dataset("csv", path=path, label="outcome", seed=3)[1]
    c = load_dataset("csv", path=path, label="outcome", seed=4)[1]
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_features_choose_and_order_columns_and_classes_fix_the_label_order(
    tmp_path: Path
) -> None:
    path = _write(_frame(), tmp_path / "t.csv")
    data, spec = read_table(path, label="outcome", features=["site", "age"],
                            classes=["well", "sick", "unseen"])
    assert spec.feature_names == ("site", "age") and data.x.shape == (40, 2)
    assert spec.classes == (0, 1, 2) and spec.class_names == ("well", "sick", "unseen")
    assert data.y[0] == 0 and data.y[1] == 1  # row 0 is "well", row 1 "sick"


def test_integer_labels_match_classes_however_they_are_spelled(tmp_path: Path) -> None:
    frame = _frame().assign(outcome=np.arange(40) % 3)
    path = _write(frame, tmp_path / "t.csv")
    data, spec = read_table(path, label="outcome", classes=["2", 1.0, 0])
    assert spec.class_names == ("2", "1", "0")
    assert data.y[:3].tolist() == [2, 1, 0]


def test_regression_keeps_the_target_as_numbers(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "t.parquet")
    data, spec = read_table(path, label="dose", features=["age", "site"], task="regression",
                            file_format="parquet")
    assert spec.task == "regression" and spec.classes == ()
    assert data.y.dtype == np.float32 and np.allclose(data.y, _frame()["dose"])


def test_test_fraction_zero_keeps_every_row_for_training(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "t.csv")
    train, test, _ = load_dataset("csv", path=path, label="outcome", test_fraction=0.0)
    assert (len(train), len(test)) == (40, 0)


@pytest.mark.parametrize(("change", "options", "message"), [
    (None, {"label": "missing"}, "no label column 'missing'; columns: age, dose, site, outcome"),
    (None, {"label": "outcome", "features": ["age", "weight"]}, "no feature column 'weight'"),
    (None, {"label": "outcome", "features": ["outcome"]}, "cannot also be a feature"),
    (None, {"label": "outcome", "features": "age"}, "expected a list of column names"),
    (None, {"label": "outcome", "task": "ranking"}, "allowed: classification, regression"),
    (None, {"label": "outcome", "classes": ["well"]}, r"values not in classes \['well'\]"),
    (None, {"label": "outcome", "classes": ["a", "a"]}, "listed twice"),
    (None, {"label": "outcome", "task": "regression"}, "not numeric, so it cannot be"),
    (None, {"label": "dose", "features": ["age"]}, "fractional numbers; set task: regression"),
    ("text", {"label": "outcome"}, "feature column 'ward' is not numeric"),
    ("nan", {"label": "outcome"}, r"missing values \(NaN\) in feature columns 'dose' \(2\)"),
    ("nan-label", {"label": "outcome"}, "label column 'outcome' has 1 missing values"),
])
def test_bad_tables_raise_a_config_error_naming_the_problem(
    tmp_path: Path, change: str | None, options: dict[str, object], message: str
) -> None:
    frame = _frame()
    if change == "text":
        frame["ward"] = "north"
    elif change == "nan":
        frame.loc[[3, 5], "dose"] = np.nan
    elif change == "nan-label":
        frame.loc[4, "outcome"] = None
    path = _write(frame, tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=message):
        load_dataset("csv", path=path, **options)


def test_missing_empty_headless_and_corrupt_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset("csv", path=str(tmp_path / "nope.csv"), label="y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_dataset("csv", path=str(tmp_path / "empty.csv"), label="y")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    with pytest.raises(ConfigError, match="has no rows"):
        load_dataset("csv", path=str(tmp_path / "header.csv"), label="y")
    (tmp_path / "bad.parquet").write_text("a,b,y\n1,2,3\n")
    with pytest.raises(ConfigError, match="not a readable parquet file"):
        load_dataset("parquet", path=str(tmp_path / "bad.parquet"), label="y")
    with pytest.raises(ConfigError, match="expected the path of a csv file"):
        load_dataset("csv", path="", label="y")


def test_unknown_loader_options_are_named(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="sep"):
        load_dataset("csv", path=path, label="outcome", sep=";")
