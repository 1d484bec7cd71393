"""ECG heartbeats: MIT-BIH records (WFDB) or a .npz of beat rows.

A WFDB folder is read with `wfdb`: two leads of every record (the one named MLII or
II first, where there is one; resampled to 360 Hz where recorded at another rate),
one window around each annotated R peak, labelled with the 5 AAMI classes; each
lead's beat with its difference from the patient's median beat in that lead, and 7
features relative to the patient's own beats (5 RR-interval features, 2 of shape) as
more channels (`read_record`). Each MIT-BIH record is one
patient: a beat's natural site and its patient are its record, so `partition=natural`
splits hospitals by patient and DP protects each patient's beats together.
A .npz file holds `x` (N, T) beats, `y` labels and optionally `groups` (each
beat's site, for partition=natural), `patients` (each beat's patient: DP is then per
patient, else per beat) and a central test split `x_test`, `y_test` (e.g. the
inter-patient DS2 records), which only the server's evaluation reads.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data import Samples, TaskData, check_labels, skip_or_raise
from common.errors import DataError

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
AAMI_MAP = {
    **dict.fromkeys("NLRej", 0),
    **dict.fromkeys("AaJS", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}
BEFORE, AFTER = 90, 90  # samples at 360 Hz around the R peak: 0.5 s in all
DOWNSAMPLE = 2  # 180 samples -> 90 time steps
# The 7 ratio features enter as FEATURE_SCALE * ln(ratio): 0 at the patient's usual beat, symmetric
# in early / late, and spread about as widely as the waveform. Raw ratios sit near 1 with a spread
# of ~0.2, so under DP their share of each clipped gradient was small; on DS1 validation patients
# (centralised DP, epsilon 3) log ratios gave macro-F1 0.45 against 0.42 (docs/benchmarks.md).
FEATURE_SCALE, RATIO_FLOOR = 3.0, 1e-3
# The limb lead the AAMI literature classifies on (modified lead II; "II" in other databases), matched
# without regard to case: MIT-BIH's lead 0 but in 114 (its lead 1), 102 and 104 (neither: lead 0 is used).
PRIMARY_LEADS = ("MLII", "II")
RATE = 360  # Hz: MIT-BIH's; a record at another rate is resampled to it (wfdb.processing), so a window is 0.5 s
# Channels 0-3: each lead's z-normalised beat and its difference from the lead's median beat; from
# WAVE_CHANNELS on, the 7 features (the same at every step). Both leads, against one, on DS1 validation
# patients (federated DP, epsilon 3, seeds 0-4 twice against 10 seeds): S beats found 0.62 against
# 0.56, V 0.85 against 0.88 (docs/benchmarks.md, "MIT-BIH: second lead and model variants on DS1
# validation patients"); on DS2 (3 seeds) S 0.75 against 0.60, V 0.90 against 0.89 ("MIT-BIH
# inter-patient (DS1 train, DS2 test), second lead (issue 18)").
WAVE_CHANNELS = 4


def load_sequences(path: str, config: RunConfig) -> TaskData:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {path} does not exist; pass a WFDB record folder or a .npz")
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"{path}: sequences must be a folder of WFDB records or a .npz file")
        return _load_npz(p)
    records = sorted(h.stem for h in p.glob("*.hea"))
    if not records:
        raise DataError(f"{path}: no WFDB header (.hea) files in this folder")
    parts, kept = [], []
    for r in records:
        try:
            parts.append(read_record(p / r))
            kept.append(r)
        except DataError as err:
            skip_or_raise(err, "WFDB record", p)  # bad-files=skip: the record is left out and counted
    if not parts:
        raise DataError(f"{path}: none of the {len(records)} WFDB records could be read")
    records = kept
    x = np.concatenate([b for b, _ in parts])
    y = np.concatenate([lab for _, lab in parts])
    groups = np.concatenate([np.full(len(lab), r, dtype=object) for r, (_, lab) in zip(records, parts, strict=True)])
    return TaskData(Samples(x, y, groups, patients=groups), None, len(AAMI_CLASSES), path)


def read_record(stem: Path) -> tuple[np.ndarray, np.ndarray]:
    """Beats (N, T, 11) and AAMI labels (N,) of one WFDB record. Channel 0: the z-normalised
    waveform of the primary lead (the one named MLII or II where the record has it, else its first);
    1: its difference from the record's median beat (the patient's own template); 2 and 3: the same
    for the record's next lead (V1 in most MIT-BIH records; further leads are not read). A one-lead
    record, or one whose second lead has gaps (NaN) where beats are, repeats its primary lead there,
    with a warning naming the record and lead. A record at another rate than 360 Hz is resampled to
    it first. Channels 4-10, the same at every step: 3 ln of the beat's 5 RR features
    (`rr_features`) and 2 shape features of the primary lead (`shape_features`), all ratios to the
    patient's usual beat. The features and the
    difference channels are relative to the patient's own beats: inter-patient classification
    fails on absolute features (de Chazal et al. 2004, who also used both leads)."""
    import wfdb
    from wfdb.processing import resample_multichan

    try:
        record = wfdb.rdrecord(str(stem))
        annotation = wfdb.rdann(str(stem), "atr")
        leads = np.asarray(record.p_signal, dtype=np.float64)
        if record.fs != RATE:
            leads, annotation = resample_multichan(leads, annotation, record.fs, RATE)
        names = [str(n) for n in (record.sig_name or [])]
        names += [f"lead {i}" for i in range(len(names), leads.shape[1])]  # unnamed leads, for messages
        upper = [n.upper() for n in names]
        primary = next((upper.index(p) for p in PRIMARY_LEADS if p in upper), 0)
        second = next((i for i in range(leads.shape[1]) if i != primary), primary)
        signal, other = leads[:, primary], leads[:, second]
    except Exception as err:  # wfdb raises bare ValueError/IndexError/OSError on bad files
        raise DataError(
            f"{stem}: cannot read this WFDB record ({type(err).__name__}: {err}); check that "
            ".hea, .dat and .atr are complete"
        ) from err
    symbols = np.asarray(annotation.symbol)
    is_beat = np.isin(symbols, list(AAMI_MAP))
    peaks, symbols = np.asarray(annotation.sample)[is_beat], symbols[is_beat]
    keep = (peaks >= BEFORE) & (peaks + AFTER <= len(signal))
    if not keep.any():
        raise DataError(f"{stem}: no annotated heartbeats found in this record")
    rhythm = rr_features(peaks)
    raw, x = _windows(signal, peaks[keep])
    if not np.isfinite(raw).all():
        raise DataError(f"{stem}: lead {names[primary]} holds NaN values where beats are (a lead-off gap or a "
                        "truncated .dat file); cut the gap out of the record or leave the record out")
    raw2, x2 = _windows(other, peaks[keep])
    if not np.isfinite(raw2).all():
        warnings.warn(f"{stem}: lead {names[second]} holds NaN values where beats are; its channels repeat lead "
                      f"{names[primary]}", stacklevel=2)
        x2 = x
    template, template2 = np.median(x, axis=0), np.median(x2, axis=0)
    ratios = np.concatenate([rhythm[keep], shape_features(raw, x, template)], axis=1)
    constant = FEATURE_SCALE * np.log(np.maximum(ratios, RATIO_FLOOR))
    steps = x.shape[1]
    channels = np.concatenate([x[..., None], (x - template)[..., None], x2[..., None], (x2 - template2)[..., None],
                               np.repeat(constant[:, None, :], steps, axis=1)], axis=2)
    labels = np.asarray([AAMI_MAP[s] for s in symbols[keep]], dtype=np.int64)
    return channels.astype(np.float32), labels


def _windows(signal: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One lead's beats around `peaks`: raw (N, T) and z-normalised per beat."""
    raw = np.asarray([signal[p - BEFORE : p + AFTER : DOWNSAMPLE] for p in peaks], dtype=np.float64)
    return raw, (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-6)


def rr_features(peaks: np.ndarray, local: int = 10) -> np.ndarray:
    """(N, 5) rhythm of each beat: the RR interval before it (pre), the one after it (post) and
    the mean of the `local` intervals before pre (the local rhythm), each relative to the
    record's mean RR interval; then pre / local and post / pre. A beat's own waveform is
    z-normalised, so these carry what it loses: whether it came early (de Chazal et al. 2004's
    RR features). A supraventricular (S) beat is premature against the *local* rhythm, which
    may itself be fast, so pre / local (below 1) is its cue; post / pre (above 1) is the
    compensatory pause after a premature beat. All unitless, in the patient's own rhythm."""
    if len(peaks) < 2:
        return np.ones((len(peaks), 5), dtype=np.float32)
    rr = np.diff(peaks).astype(np.float64)
    mean = rr.mean()
    pre = np.concatenate([[rr[0]], rr])
    post = np.concatenate([rr, [rr[-1]]])
    cumulative = np.concatenate([[0.0], np.cumsum(pre)])
    index = np.arange(len(pre))
    start = np.maximum(index - local, 0)
    count = index - start
    local_mean = np.where(count > 0, (cumulative[index] - cumulative[start]) / np.maximum(count, 1), pre)
    return np.stack([pre / mean, post / mean, local_mean / mean, pre / local_mean, post / pre],
                    axis=1).astype(np.float32)


def shape_features(raw: np.ndarray, x: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(N, 2) each beat's morphology against the patient's own: its peak-to-peak amplitude over
    the record's median one (z-normalisation removes amplitude), and the root mean square
    difference of its z-normalised waveform from the record's median beat (a ventricular beat
    is wide and unlike the patient's usual beat; a supraventricular one is alike)."""
    span = raw.max(axis=1) - raw.min(axis=1)
    amplitude = span / (np.median(span) + 1e-9)
    distance = np.sqrt(((x - template) ** 2).mean(axis=1))
    return np.stack([amplitude, distance], axis=1)


def _load_npz(path: Path) -> TaskData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise DataError(f"{path}: a sequence .npz needs arrays 'x' and 'y'")
            if ("x_test" in npz.files) != ("y_test" in npz.files):
                raise DataError(f"{path}: a central test split needs both 'x_test' and 'y_test'")
            train = _beats(path, npz["x"], npz["y"], npz["groups"] if "groups" in npz.files else None,
                           patients=npz["patients"] if "patients" in npz.files else None)
            test = _beats(path, npz["x_test"], npz["y_test"], None, "_test") if "x_test" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    if test is not None and test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(f"{path}: 'x_test' rows have shape {test.x.shape[1:]} but 'x' rows {train.x.shape[1:]}")
    num_classes = max(2, int(max(train.y.max(), test.y.max() if test is not None else 0)) + 1)
    check_labels(train.y, num_classes, str(path))
    if test is not None:
        check_labels(test.y, num_classes, f"{path} (y_test)")
    return TaskData(train, test, num_classes, str(path))


def _beats(path: Path, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, suffix: str = "",
           patients: np.ndarray | None = None) -> Samples:
    x, y = x.astype(np.float32), y.reshape(-1).astype(np.int64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise DataError(f"{path}: 'x{suffix}' has shape {x.shape}, expected (N, T) or (N, T, features)")
    if x.shape[1] == 1 and x.shape[2] > 1:
        raise DataError(
            f"{path}: 'x{suffix}' has shape {x.shape}: one time step of {x.shape[2]} features. Time runs along "
            "axis 1, (N, T, features); a channels-first array (N, channels, T) needs np.transpose(x, (0, 2, 1))"
        )
    if patients is not None and len(patients) != len(y):
        raise DataError(f"{path}: 'patients' has {len(patients)} entries but 'y' has {len(y)}; one per beat")
    return Samples(x, y, groups.astype(str).astype(object) if groups is not None else None,
                   patients.astype(str).astype(object) if patients is not None else None)
