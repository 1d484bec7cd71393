"""The privacy unit of every DP benchmark row, and what its guarantee says about a patient.

    .venv/bin/python benchmarks/privacy_units.py

A guarantee per record (a beat, an image) protects a patient with k records only by
group privacy: (k epsilon, k e^((k-1) epsilon) delta) (common.privacy.group_privacy),
which is no guarantee once that delta reaches 1. This script counts the records per
patient of each benchmark's training data where the data names patients (MIT-BIH:
one record per patient; the Kermany chest X-ray folder, PneumoniaMNIST's source:
patient ids in the file names) and prints one JSON line per (benchmark, epsilon);
the table goes to docs/benchmarks.md. Runs on data that names patients now train
per patient (common/training.py): their epsilon is the patient's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.privacy import group_privacy  # noqa: E402
from report import write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))
DELTA = 1e-5


def kermany_images_per_patient() -> list[int]:
    """Images per patient in the chest X-ray folder's train/ (PneumoniaMNIST's source)."""
    from common.tasks.image_cnn.dataset import patient_of

    folder = DATA / "chest_xray_kermany_224" / "train"
    counts: dict[str, int] = {}
    for path in folder.glob("*/*"):
        patient = patient_of(path)
        if patient is not None:
            counts[patient] = counts.get(patient, 0) + 1
    return sorted(counts.values())


def mitbih_beats_per_patient(normal_per_record: int = 300) -> list[int]:
    """Training beats per patient in benchmarks/mitbih_utility.py's DS1 (at most 300 N beats each)."""
    from mitbih_utility import DS1, beats

    train = beats(DS1, normal_per_record, 0)
    _, counts = np.unique(train.groups, return_counts=True)
    return sorted(int(c) for c in counts)


def guarantee(epsilon: float, k: int) -> str:
    eps, delta = group_privacy(epsilon, DELTA, k)
    return "none (delta >= 1)" if delta >= 1 else f"epsilon {eps:g}, delta {delta:.2g}"


def main() -> None:
    kermany = kermany_images_per_patient()
    beats = mitbih_beats_per_patient()
    sources = {
        "heart disease (4 hospitals)": ("record = patient (one row each)", [1]),
        "PneumoniaMNIST": ("image (the .npz names no patient)", kermany),
        "BloodMNIST": ("image (the .npz names no patient)", []),
        "MIT-BIH DS1 (record-level rows)": ("beat", beats),
    }
    rows = [
        ("heart_utility", "heart disease (4 hospitals)", (1.0, 3.0)),
        ("medmnist_utility", "PneumoniaMNIST", (3.0, 8.0)),
        ("medmnist_utility", "BloodMNIST", (3.0, 8.0)),
        ("medmnist_dp_tuning", "PneumoniaMNIST", (8.0,)),
        ("gan_tstr", "PneumoniaMNIST", (10.0,)),
        ("mitbih_utility", "MIT-BIH DS1 (record-level rows)", (3.0,)),
    ]
    table = []
    for script, data, epsilons in rows:
        unit, counts = sources[data]
        for epsilon in epsilons:
            if counts:
                median, most = int(np.median(counts)), max(counts)
                several = sum(c >= 2 for c in counts) / len(counts)
                row = {"benchmark": script, "data": data, "unit": unit, "epsilon per unit": epsilon,
                       "records per patient (median / max)": f"{median} / {most}",
                       "patients with 2+ records": f"{several:.0%}",
                       "patient with 2 records": guarantee(epsilon, 2) if most >= 2 else "",
                       "patient, median": guarantee(epsilon, median), "patient, max": guarantee(epsilon, most)}
            else:
                row = {"benchmark": script, "data": data, "unit": unit, "epsilon per unit": epsilon,
                       "records per patient (median / max)": "unknown", "patients with 2+ records": "unknown",
                       "patient with 2 records": guarantee(epsilon, 2),
                       "patient, median": "unknown", "patient, max": "unknown"}
            print(json.dumps({"measure": "privacy_unit", **row}), flush=True)
            table.append(row)
    write_section(
        "Privacy unit of every DP benchmark row", table,
        ["benchmark", "data", "unit", "epsilon per unit", "records per patient (median / max)",
         "patients with 2+ records", "patient with 2 records", "patient, median", "patient, max"],
        notes=f"delta {DELTA} per unit. A guarantee per record protects a patient with k records by group privacy "
              "only: (k epsilon, k e^((k-1) epsilon) delta). PneumoniaMNIST's images come from the Kermany chest "
              f"X-ray collection, whose train folder holds {len(kermany)} patients with 1-{max(kermany)} images each "
              "(the .npz drops the ids, so its counts are the source's). MIT-BIH: the benchmark's DS1 training beats "
              "per patient (at most 300 N beats per record). Since issue 17 fedward trains per patient wherever the "
              "data names patients (a WFDB folder, the chest X-ray folder, DICOM, a CSV 'patient' column, an .npz "
              "'patients' array); the rows above were measured on data without patient ids (the MIT-BIH benchmark "
              "writes an .npz without 'patients' unless run with --unit patient), so their unit is the record.",
    )


if __name__ == "__main__":
    main()
