"""Which privacy unit each data source gives: the patient where the data names patients, else the record.

A guarantee per heartbeat says little about a patient with 2,000 beats: where the readers
can tell whose sample it is, they say so, and DP-SGD then protects patients (dp_plan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.config import RunConfig
from common.tasks import load_data
from common.training import dp_plan, privacy_unit


def test_mitbih_beats_belong_to_their_record_s_patient(data_dir: Path, tmp_path: Path):
    for record in ("100", "119"):
        for suffix in ("hea", "dat", "atr"):
            (tmp_path / f"{record}.{suffix}").symlink_to(data_dir / "mitbih_arrhythmia" / f"{record}.{suffix}")
    data = load_data(RunConfig(task="sequence-rnn", data_path=str(tmp_path)))
    assert set(data.train.patients) == {"100", "119"}
    assert privacy_unit(data.train) == "patient"
    plan = dp_plan(data.train, RunConfig(task="sequence-rnn", batch_size=32))
    assert (plan.unit, plan.units, plan.sample_rate) == ("patient", 2, 1.0), "2 patients, not ~4,000 beats"


def test_chest_xray_file_names_give_the_patient(tmp_path: Path):
    names = {
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_7.jpeg", "person22_bacteria_3.jpeg"],
        "NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0115-0001.jpeg"],
    }
    for label, files in names.items():
        (tmp_path / label).mkdir()
        for name in files:
            Image.new("L", (8, 8), 128).save(tmp_path / label / name)
    data = load_data(RunConfig(task="image-cnn", data_path=str(tmp_path), image_size=8))
    assert sorted(data.train.patients) == sorted(
        ["IM-0115", "IM-0115", "NORMAL2-IM-0115", "person1", "person1", "person22"])
    assert dp_plan(data.train, RunConfig(task="image-cnn")).units == 4
    (tmp_path / "NORMAL" / "scan.png").write_bytes((tmp_path / "NORMAL" / "IM-0115-0001.jpeg").read_bytes())
    unnamed = load_data(RunConfig(task="image-cnn", data_path=str(tmp_path), image_size=8, seed=1))
    assert unnamed.train.patients is None and privacy_unit(unnamed.train) == "record", \
        "one file without a patient: no patient-level claim"


def test_tables_and_arrays_name_patients_in_their_own_column(tmp_path: Path):
    table = tmp_path / "t.csv"
    table.write_text("a,b,label,patient\n1,2,0,x\n3,4,1,x\n5,6,0,y\n")
    assert list(load_data(RunConfig(data_path=str(table))).train.patients) == ["x", "x", "y"]
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b,label\n1,2,0\n3,4,1\n")
    assert privacy_unit(load_data(RunConfig(data_path=str(plain))).train) == "record"
    beats = tmp_path / "beats.npz"
    np.savez(beats, x=np.zeros((4, 10)), y=np.array([0, 1, 0, 1]), groups=np.array(["s", "s", "t", "t"]),
             patients=np.array(["p", "q", "q", "r"]))
    samples = load_data(RunConfig(task="sequence-rnn", data_path=str(beats))).train
    assert list(samples.patients) == ["p", "q", "q", "r"] and list(samples.groups) == ["s", "s", "t", "t"]


def test_heart_disease_rows_are_scaled_alone(data_dir: Path, tmp_path: Path):
    """Each row is one patient (the unit is the record) and its features do not depend on the other
    rows: a file with one row more scales every other row exactly as before."""
    lines = (data_dir / "heart_disease_uci" / "processed.switzerland.data").read_text().splitlines()
    full = tmp_path / "full" / "processed.switzerland.data"
    full.parent.mkdir()
    full.write_text("\n".join(lines) + "\n")
    more = load_data(RunConfig(data_path=str(full))).train
    for gone in range(len(lines)):  # the first line that is a complete row
        short = tmp_path / f"without-{gone}" / "processed.switzerland.data"
        short.parent.mkdir()
        short.write_text("\n".join(lines[:gone] + lines[gone + 1:]) + "\n")
        few = load_data(RunConfig(data_path=str(short))).train
        if len(few) < len(more):
            break
    assert privacy_unit(more) == "record"
    kept = np.delete(np.arange(len(more)), np.flatnonzero((more.x[:, None] != few.x[None]).any(-1).all(1)))
    assert len(kept) == len(few) and np.array_equal(more.x[kept], few.x)
    assert np.abs(more.x).max() < 10, "scaled to a few units by the public reference values"


def test_every_file_of_the_real_chest_xray_folder_names_its_patient(data_dir: Path):
    """The real Kermany folder has four-part names (IM-0011-0001-0001.jpeg, NORMAL2-IM-0173-0001-0002.jpeg):
    one unmatched name made the whole folder train with the record as the unit, while the README promised
    the patient."""
    from common.tasks.image_cnn.dataset import KERMANY_PATIENT

    folder = data_dir / "chest_xray_kermany_224"
    names = [p.stem for p in folder.rglob("*.jpeg")]
    assert names, f"no images under {folder}"
    assert [n for n in names if not KERMANY_PATIENT.match(n)] == []
    patient = {n: (m.group(1) or m.group(2)) for n in ("IM-0011-0001-0001", "IM-0011-0001")
               if (m := KERMANY_PATIENT.match(n))}
    assert patient == {"IM-0011-0001-0001": "IM-0011", "IM-0011-0001": "IM-0011"}
    data = load_data(RunConfig(task="image-cnn", data_path=str(folder), max_samples=400, image_size=16))
    assert privacy_unit(data.train) == "patient"
