from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import DataError
from common.tasks import get_task

CONFIG = RunConfig()


def load(path: str):
    return get_task("tabular").load(path, CONFIG)


def test_heart_disease_is_cleaned_as_flamby_does(data_dir: Path):
    data = load(str(data_dir / "heart_disease_uci"))
    sites, counts = np.unique(data.train.groups, return_counts=True)
    # README of the shared data: 303 / 261 / 46 / 130 = 740 rows after cleaning.
    assert dict(zip(sites, counts, strict=True)) == {
        "cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130,
    }
    assert data.input_shape == (10,) and data.num_classes == 2
    assert set(np.unique(data.train.y)) == {0, 1}


def test_one_hospital_file_alone_is_one_site(data_dir: Path):
    data = load(str(data_dir / "heart_disease_uci" / "processed.hungarian.data"))
    assert len(data.train) == 261 and set(data.train.groups) == {"hungarian"}


def test_breast_cancer_ships_with_scikit_learn():
    data = load("builtin:breast-cancer")
    assert len(data.train) == 569 and data.input_shape == (30,)


def test_missing_path_is_named(tmp_path: Path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        load(str(tmp_path / "nope"))


def test_heart_file_with_wrong_columns_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "processed.mine.data"
    bad.write_text("63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n63,1,1,145\n")
    with pytest.raises(DataError, match=r"processed.mine.data, line 2: 4 columns, expected 14"):
        load(str(bad))


def test_csv_without_label_column_says_what_to_add(tmp_path: Path):
    bad = tmp_path / "clinic.csv"
    bad.write_text("age,chol\n50,200\n")
    with pytest.raises(DataError, match="clinic.csv: no 'label' column"):
        load(str(bad))


def test_csv_with_a_word_in_a_number_cell_names_the_line(tmp_path: Path):
    bad = tmp_path / "clinic.csv"
    bad.write_text("age,chol,label\n50,200,0\n61,high,1\n")
    with pytest.raises(DataError, match="clinic.csv, line 3: a cell is empty or not a number"):
        load(str(bad))


def test_csv_with_hospital_column_gives_natural_sites(tmp_path: Path):
    table = tmp_path / "clinic.csv"
    table.write_text("age,chol,label,hospital\n50,200,0,a\n61,240,1,b\n")
    data = load(str(table))
    assert list(data.train.groups) == ["a", "b"] and data.train.x.shape == (2, 2)
