"""Feature scaling that uses no statistic of anyone's private data.

Scaling by the training split's own mean and spread couples every record to all the
others: adding one record moves every scaled feature, so one record's DP-SGD gradient
depends on the rest of the batch and DP's sensitivity bound no longer holds (issue 17,
item 3). Each record is therefore scaled alone, by constants fixed before any data is
read, the same at every hospital and on the server:

- heart disease: clinical reference values of each column (centre, spread), from the
  features' definitions in the UCI description, not from the data;
- fedward's built-in breast-cancer data: the published ranges of its documentation
  (scikit-learn's description of the public WDBC data), mapped to [-3, 3];
- any other table: sign(x) log(1 + |x|), which brings counts and laboratory values of
  any magnitude within a few units without looking at other rows.
"""

from __future__ import annotations

import re

import numpy as np

# column: (centre, spread) of a typical adult cardiology patient; binary columns 0/1 -> -1/+1
HEART_REFERENCE: dict[str, tuple[float, float]] = {
    "age": (55.0, 10.0),  # years
    "sex": (0.5, 0.5),  # 0 female, 1 male
    "cp": (2.5, 1.0),  # chest pain type 1-4
    "trestbps": (130.0, 20.0),  # resting blood pressure, mm Hg (normal about 120)
    "chol": (200.0, 50.0),  # serum cholesterol, mg/dl (desirable below 200)
    "fbs": (0.5, 0.5),  # fasting blood sugar > 120 mg/dl
    "restecg": (1.0, 1.0),  # resting ECG 0-2
    "thalach": (150.0, 25.0),  # maximum heart rate reached, beats/min (about 220 - age)
    "exang": (0.5, 0.5),  # exercise-induced angina
    "oldpeak": (1.0, 1.0),  # ST depression by exercise, mm
}


def reference_scale(x: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> np.ndarray:
    return ((x - centre) / spread).astype(np.float32)


def heart_scale(x: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    centre = np.array([HEART_REFERENCE[c][0] for c in columns])
    spread = np.array([HEART_REFERENCE[c][1] for c in columns])
    return reference_scale(x, centre, spread)


def signed_log(x: np.ndarray) -> np.ndarray:
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def published_ranges(description: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each feature from a scikit-learn data set description's summary table."""
    rows = re.findall(r"^[a-z][a-z ()]+:\s+(-?[\d.]+)\s+(-?[\d.]+)\s*$", description, flags=re.MULTILINE)
    if len(rows) != count:
        raise ValueError(f"the description lists {len(rows)} feature ranges, expected {count}")
    low, high = np.array(rows, dtype=np.float64).T
    return low, high


def range_scale(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[low, high] -> [-3, 3]: centred on the range's middle, in units of range / 6, the spread a
    range of a few hundred roughly normal values suggests (so features land near unit scale)."""
    return (6 * (x - low) / np.maximum(high - low, 1e-12) - 3).astype(np.float32)
